"""A job on a 1-CPU machine finishes (issue 7): the encoder actor reserves no CPU there, so Ray Data's read,
prepare and write tasks, which each need a whole CPU, still run. Half a CPU reserved left half a CPU free,
and the run waited forever ("Cluster resources are not enough to run any task")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from ..jobfiles import write_job
from .audit import audit_table

# its own process: this one may hold a 2-CPU Ray runtime already
_DRIVER = """
import dataclasses, json, sys
import ray
from jobs import run_job
ray.init(num_cpus=1, include_dashboard=False, object_store_memory=512 * 1024**2, log_to_driver=False)
summary = run_job(sys.argv[1], progress=False)
with open(sys.argv[2], "w") as fh:
    json.dump(dataclasses.asdict(summary), fh, default=str)
ray.shutdown()
"""


def test_a_job_on_a_one_cpu_ray_runtime_finishes(tmp_path, lee_parquet, tiny_bert_dir):
    out = tmp_path / "out.lance"
    job = write_job(
        tmp_path / "job.toml",
        granularities=["l2_d32"],
        input={"uri": str(lee_parquet), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(tiny_bert_dir)},
        output={"uri": str(out)},
        cluster={"rows_per_block": 50},
    )
    result = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(job), str(result)],
        capture_output=True,
        text=True,
        timeout=240,  # a starved run never ends; this fails it instead of hanging the suite
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads(result.read_text())
    assert summary["pool"].startswith("1 CPU actor(s) x 1 torch threads (reserving 0 CPU each)"), summary["pool"]
    t = pq.read_table(lee_parquet, columns=["doc_id", "body"])
    expected = dict(zip(t.column("doc_id").to_pylist(), t.column("body").to_pylist(), strict=True))
    assert summary["rows_embedded"] == len(expected)
    audit = audit_table(str(out), expected, tiny_bert_dir, "l2_d32")
    assert audit.clean and audit.rows == len(expected), audit
