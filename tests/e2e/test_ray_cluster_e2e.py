"""A job joining an existing Ray cluster (`ray start --head` on loopback) by address."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import open_table

from ..jobfiles import write_job
from ..raynodes import ray_head_process

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_head():
    """A `ray start --head` cluster on loopback (no dashboard); yields its address."""
    with ray_head_process(dashboard=False) as (proc, port, _):
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("ray start --head exited") from None
                time.sleep(0.5)
        time.sleep(3)  # GCS accepts connections slightly before the raylet is ready
        yield f"127.0.0.1:{port}"


def test_job_runs_on_an_existing_cluster(ray_head, tmp_path, tiny_bert_dir):
    corpus = tmp_path / "docs.parquet"
    pq.write_table(
        pa.table({"id": [f"d{i}" for i in range(50)], "text": [f"text number {i}" for i in range(50)]}), corpus
    )
    job = write_job(
        tmp_path / "job.toml",
        granularities=["l2_d32"],
        input={"uri": str(corpus)},
        model={"path": str(tiny_bert_dir)},
        output={"uri": str(tmp_path / "out.lance")},
    )
    exe = Path(sys.executable).with_name("embedjob")
    out = subprocess.run(
        [str(exe), "run", str(job), "--no-progress", "--address", ray_head],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "committed" in out.stdout
    assert open_table(str(tmp_path / "out.lance")).count_rows() == 50
