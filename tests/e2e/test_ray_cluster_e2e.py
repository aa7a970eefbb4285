"""A job joining an existing Ray cluster (`ray start --head` on loopback) by address."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import open_table

from ..conftest import write_job

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_head():
    """`ray start --head --block` in its own process group; the whole group is killed at teardown."""
    # Ray's unix sockets live under the temp dir: keep its path short (pytest's tmp_path is too long)
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_exe = Path(sys.executable).with_name("ray")
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    proc = subprocess.Popen(
        [
            str(ray_exe),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    try:
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
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # SIGTERM makes Ray drain for 30 s; nothing here needs that
        proc.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


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
