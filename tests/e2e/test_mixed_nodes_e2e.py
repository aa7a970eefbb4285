"""Nodes of different sizes (issue 7): a two-node Ray cluster on this machine whose head has 2 CPUs and whose
second node has 1 CPU and 2 (fake) GPUs.

- CPU actors get a share per node, sized to it: one 2-thread actor on the head, one 1-thread actor on the
  small node, each in a bundle pinned there (sized by the largest node, both ran 2 threads and Ray could
  put them on either node).
- GPU actors: both GPUs are on the 1-CPU node. Sized from the cluster's 3 CPUs, each actor reserved 1 CPU
  and the second could never start; sized per node, they reserve none and a task still finds a CPU.

The drivers run in their own processes (this one may hold another Ray runtime).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..raynodes import ray_two_node_cluster
from .audit import audit_table
from .test_multinode_e2e import _expected, _run

# starts the pool's actors the way a job does (start_pool + actor_placement), each loading the encoder as
# an EncodeActor does, and reports where each runs with how many torch threads; then the GPU pool, and a
# 1-CPU task while its actors hold the GPUs. Prints one JSON line.
_PLACE = """
import json, sys, types
import ray
from cluster import ray_session
from cluster import PoolRequest, actor_placement, start_pool
from cluster import load_encoder
from embedder import EncoderConfig

model, address = sys.argv[1], sys.argv[2]

class Slot:
    def __init__(self, pool):
        self.encoder = load_encoder(model, EncoderConfig(granularities=("l2_d32",)), pool)

    def where(self):
        import torch
        return ray.get_runtime_context().get_node_id(), torch.get_num_threads()

def request(gpus_per_actor):
    return PoolRequest(gpus_per_actor=gpus_per_actor, progress=False)

out = {}
with ray_session(address):
    slot = ray.remote(Slot)
    for name, gpus in (("cpu", 0), ("gpu", 1)):
        pool = start_pool(request(gpus))
        with actor_placement(pool, model) as args:
            slots = [slot.options(**args).remote(pool) for _ in range(pool.actors)]
            ready, waiting = ray.wait([s.where.remote() for s in slots], num_returns=len(slots), timeout=120)
            task = ray.remote(num_cpus=1)(lambda: ray.get_runtime_context().get_node_id()).remote()
            task_ready, _ = ray.wait([task], timeout=60)
            out[name] = {
                "pool": pool.describe(),
                "shares": [[s.node_id, s.actors, s.torch_threads, s.num_cpus] for s in pool.per_node],
                "slots": ray.get(ready),
                "not_started": len(waiting),
                "task_ran": bool(task_ready),
            }
            for s in slots:
                ray.kill(s)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def mixed_nodes():
    """Head: 2 CPUs. Worker: 1 CPU, 2 (fake) GPUs. Both stopped, and checked gone, at teardown."""
    with ray_two_node_cluster(head_cpus=2, worker_cpus=1, worker_gpus=2) as cluster:
        yield cluster


def test_each_node_gets_actors_sized_to_it_and_gpu_actors_fit_a_one_cpu_node(mixed_nodes, tiny_bert_dir):
    proc = subprocess.run(
        [sys.executable, "-c", _PLACE, str(tiny_bert_dir), mixed_nodes.address],
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    head, small = mixed_nodes.head_id, mixed_nodes.worker_id

    cpu = out["cpu"]
    assert cpu["shares"] == [[head, 1, 2, 1.0], [small, 1, 1, 0.0]] or cpu["shares"] == [
        [small, 1, 1, 0.0],
        [head, 1, 2, 1.0],
    ], cpu
    assert cpu["not_started"] == 0 and sorted(cpu["slots"]) == sorted([[head, 2], [small, 1]]), cpu
    assert cpu["task_ran"], cpu  # the head kept a whole CPU for tasks
    assert f"1 x 2 torch threads reserving 1 CPU each on {head[:8]}" in cpu["pool"], cpu["pool"]

    gpu = out["gpu"]
    assert gpu["pool"] == "2 GPU actor(s) x 1 GPU (reserving 0 CPU each)", gpu
    assert gpu["not_started"] == 0 and [node for node, _ in gpu["slots"]] == [small, small], gpu
    assert gpu["task_ran"], gpu


@pytest.mark.slow
def test_a_job_on_nodes_of_different_sizes(mixed_nodes, tmp_path, lee_parquet, tiny_bert_dir):
    expected = _expected(lee_parquet)
    cluster = {"gpus_per_actor": 0, "rows_per_block": 15, "rows_per_part": 15}  # pool sized from the nodes
    summary, _ = _run(tmp_path, mixed_nodes.address, lee_parquet, tiny_bert_dir, timeout=300, **cluster)
    assert summary["pool"].startswith("2 CPU actor(s) over 2 nodes ("), summary["pool"]
    per_node = summary["rows_per_node"]
    assert set(per_node) == {mixed_nodes.head_id, mixed_nodes.worker_id}, per_node
    assert sum(per_node.values()) == summary["rows_embedded"] == len(expected)
    audit = audit_table(str(tmp_path / "out.lance"), expected, tiny_bert_dir, "l2_d32")
    assert audit.clean and audit.rows == len(expected), audit

    # both GPU actors on the 1-CPU node: the job finishes (it waited forever for the second actor)
    (tmp_path / "gpu").mkdir()
    summary, _ = _run(tmp_path / "gpu", mixed_nodes.address, lee_parquet, tiny_bert_dir, timeout=300, gpus_per_actor=1)
    assert summary["pool"].startswith("2 GPU actor(s) x 1 GPU (reserving 0 CPU each)"), summary["pool"]
    assert set(summary["rows_per_node"]) == {mixed_nodes.worker_id}, summary["rows_per_node"]
    assert summary["rows_embedded"] == len(expected)
