"""A job across a two-node Ray cluster on this machine (issue 7): a `ray start --head` node and a second
`ray start --address ...` node, each its own raylet, object store and temp dir, both on loopback.

Each node's encoder actors get work and every id is committed exactly once; with fake GPUs (`--num-gpus 1`
on the second node only) the encoder actors run on the GPU node alone while read and write tasks still find
CPUs, so the run finishes. The torch in the "GPU" actor sees no CUDA and runs on the CPU, as expected here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster import plan_pool
from storage import StagedPart

from ..jobfiles import write_job
from ..raynodes import ray_two_node_cluster
from .audit import audit_table

# the job's driver runs in its own process (this one may hold another Ray runtime): it prints the summary
# as `embedjob run` does and writes the RunSummary's fields as JSON
_DRIVER = """
import dataclasses, json, sys
from jobs import backfill_job, run_job
from jobs.cli import print_summary
overrides = {"cluster.address": sys.argv[2]}
if len(sys.argv) > 4:  # --add-granularity
    summary = backfill_job(sys.argv[1], sys.argv[4].split(","), progress=False, overrides=overrides)
else:
    summary = run_job(sys.argv[1], progress=False, overrides=overrides)
print_summary(summary)
with open(sys.argv[3], "w") as fh:
    json.dump(dataclasses.asdict(summary), fh, default=str)
"""


def test_pool_over_several_nodes_leaves_a_whole_cpu_on_each():
    """Ray Data spreads the actors over the nodes and a read/write task needs a whole CPU on one node: the
    single-node sizing (2 actors x 0.5 CPU on 2 CPUs) leaves half a CPU on each 1-CPU node, and the run hangs."""
    one_cpu_nodes = {"head": {"CPU": 1.0}, "gpu": {"CPU": 1.0, "GPU": 1.0}}
    pool = plan_pool({"CPU": 2.0, "GPU": 1.0}, actors=2, gpus_per_actor=0, nodes=one_cpu_nodes)
    assert (pool.actors, pool.num_cpus, pool.torch_threads) == (2, 0.0, 1)
    assert pool.spread and pool.describe().endswith("(reserving 0 CPU each, spread over 2 nodes)")
    assert [(s.node_id, s.actors) for s in pool.per_node] == [("head", 1), ("gpu", 1)]
    assert not plan_pool({"CPU": 2.0, "GPU": 1.0}, nodes=one_cpu_nodes).spread  # GPUs place GPU actors
    one_node = {"head": one_cpu_nodes["head"]}
    assert plan_pool({"CPU": 2.0}, nodes=one_node) == plan_pool({"CPU": 2.0})  # one node: as before
    big = plan_pool({"CPU": 64.0}, nodes={f"n{i}": {"CPU": 16.0} for i in range(4)})
    assert (big.actors, big.torch_threads) == (8, 8)
    assert [s.actors for s in big.per_node] == [2] * 4
    assert 16 - 2 * big.num_cpus >= 1  # two actors per node, one whole CPU left on each
    assert plan_pool({"CPU": 64.0}).num_cpus > 7.5  # (the single-node sizing would leave 0.25 per node)


def test_part_files_with_and_without_nodes_read_back():
    old = '{"key": "k", "fragments": [], "ids": ["a"], "tokens": 3}'  # written before parts named nodes
    assert StagedPart.from_json(old).nodes == {}
    new = StagedPart(key="k", fragments=[], ids=["a", "b"], nodes={"n1": 2})
    assert StagedPart.from_json(new.to_json()) == new
    newer = json.dumps({**json.loads(new.to_json()), "a_later_field": 1})  # a later version's part
    assert StagedPart.from_json(newer) == new


@pytest.fixture(scope="module")
def two_nodes():
    """Head: 1 CPU, no GPU. Worker: 1 CPU, 1 (fake) GPU. Both stopped, and checked gone, at teardown."""
    with ray_two_node_cluster(head_cpus=1, worker_cpus=1, worker_gpus=1) as cluster:
        yield cluster


def _run(
    tmp_path: Path,
    address: str,
    lee_parquet: Path,
    model: Path,
    timeout: float,
    add: tuple[str, ...] = (),
    **cluster,
) -> tuple[dict, str]:
    """Run the job (or, with ``add``, backfill those granularities) in a driver process of its own."""
    out = tmp_path / "out.lance"
    job = write_job(
        tmp_path / "job.toml",
        granularities=["l2_d32", "l4_d64", *add],
        input={"uri": str(lee_parquet), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(model)},
        output={"uri": str(out)},
        cluster=cluster,
    )
    result = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(job), address, str(result), *([",".join(add)] if add else [])],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(result.read_text()), proc.stdout


def _expected(lee_parquet: Path) -> dict[str, str]:
    t = pq.read_table(lee_parquet, columns=["doc_id", "body"])
    return dict(zip(t.column("doc_id").to_pylist(), t.column("body").to_pylist(), strict=True))


@pytest.mark.slow
def test_both_nodes_encode_and_every_id_is_committed_once(two_nodes, tmp_path, lee_parquet, tiny_bert_dir):
    expected = _expected(lee_parquet)
    summary, stdout = _run(
        tmp_path,
        two_nodes.address,
        lee_parquet,
        tiny_bert_dir,
        timeout=300,
        actors=2,  # the pool is sized from the cluster's 2 CPUs: one 2-thread actor unless told
        gpus_per_actor=0,  # CPU actors, although the cluster has a GPU
        rows_per_block=15,
        rows_per_part=15,
    )
    # 0-CPU actors (1-CPU nodes): only the spread placement group keeps them off a single node
    assert summary["pool"].startswith("2 CPU actor(s) x 1 torch threads (reserving 0 CPU each, spread over 2 nodes)")
    per_node = summary["rows_per_node"]
    assert set(per_node) == {two_nodes.head_id, two_nodes.worker_id}, per_node
    assert all(n > 0 for n in per_node.values()), per_node
    assert sum(per_node.values()) == summary["rows_embedded"] == len(expected)
    audit = audit_table(str(tmp_path / "out.lance"), expected, tiny_bert_dir, "l2_d32")
    assert audit.clean and audit.rows == len(expected), audit
    # `embedjob run` shows the split when more than one node did work
    assert "rows per node (2 nodes)" in stdout, stdout
    for node, n in per_node.items():
        assert f"{node[:8]}: {n:,}" in stdout, stdout

    # a backfill spreads its fragments over the same two nodes and says so
    cluster = {"actors": 2, "gpus_per_actor": 0, "rows_per_block": 15, "rows_per_part": 15}
    summary, stdout = _run(
        tmp_path, two_nodes.address, lee_parquet, tiny_bert_dir, timeout=300, add=("l3_d16",), **cluster
    )
    assert summary["mode"] == "backfill l3_d16", summary["mode"]
    per_node = summary["rows_per_node"]
    assert set(per_node) == {two_nodes.head_id, two_nodes.worker_id}, per_node
    assert sum(per_node.values()) == summary["rows_embedded"] == len(expected)
    assert "rows per node (2 nodes)" in stdout, stdout
    audit = audit_table(str(tmp_path / "out.lance"), expected, tiny_bert_dir, "l3_d16")
    assert audit.clean and audit.rows == len(expected), audit


@pytest.mark.slow
def test_gpu_actors_go_to_the_gpu_node_and_tasks_still_run(two_nodes, tmp_path, lee_parquet, tiny_bert_dir):
    expected = _expected(lee_parquet)
    # the one GPU actor holds the worker node's only CPU: read, prepare and write run on the head's CPU;
    # were they starved, the run would hang past the timeout
    summary, stdout = _run(
        tmp_path,
        two_nodes.address,
        lee_parquet,
        tiny_bert_dir,
        timeout=300,
        gpus_per_actor=1,
        rows_per_block=15,
        rows_per_part=15,
    )
    assert summary["pool"].startswith("1 GPU actor(s)"), summary["pool"]
    assert summary["rows_per_node"] == {two_nodes.worker_id: len(expected)}, summary["rows_per_node"]
    audit = audit_table(str(tmp_path / "out.lance"), expected, tiny_bert_dir, "l2_d32")
    assert audit.clean and audit.rows == len(expected), audit
    assert "rows per node" not in stdout  # one node did all the work: no row for it
