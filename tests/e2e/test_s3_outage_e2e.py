"""Fault test 5: the S3 server stops answering mid-run (SIGSTOP) and comes back (SIGCONT).

moto keeps its data in memory, so a kill and restart would also wipe the
bucket; stopping and continuing the process is an outage with the data kept.
The run may ride it out (clients retry) or fail; either way the table must
stay readable at a committed version, and running again must finish it with
every id exactly once.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import run_job
from storage import ObjectStore, open_table, staged_runs

from ..jobfiles import write_job
from .audit import audit_table


@pytest.fixture
def own_s3(monkeypatch):
    """A moto server for this test only (it gets stopped), killed at teardown."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    for _ in range(100):
        try:
            client.list_buckets()
            break
        except Exception:
            time.sleep(0.1)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    try:
        yield proc, endpoint, client
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=10)


def test_s3_outage_mid_run(ray_local, own_s3, tmp_path, lee_articles, minilm_path):
    proc, endpoint, client = own_s3
    client.create_bucket(Bucket="data")
    rows = {f"lee-{i:03d}": t for i, t in enumerate(lee_articles) if t not in lee_articles[:i]}
    buf = io.BytesIO()
    pq.write_table(pa.table({"doc_id": list(rows), "body": list(rows.values())}), buf)
    client.put_object(Bucket="data", Key="in/lee.parquet", Body=buf.getvalue())
    uri = "s3://data/out/lee.lance"
    job = write_job(
        tmp_path / "job.toml",
        granularities=["l2_d32", "l6_d384"],
        input={"uri": "s3://data/in/lee.parquet", "id_column": "doc_id", "text_column": "body"},
        model={"path": str(minilm_path)},
        output={"uri": uri},
        cluster={"rows_per_block": 20, "rows_per_part": 20},
        storage={"endpoint": endpoint},
    )
    outcome: dict = {}

    def target():
        try:
            outcome["summary"] = run_job(job, progress=False)
        except Exception as exc:
            outcome["error"] = exc

    runner = threading.Thread(target=target)
    runner.start()

    def parts() -> int:
        listing = client.list_objects_v2(Bucket="data", Prefix="out/lee_staging/")
        return sum(1 for o in listing.get("Contents", []) if "/parts/" in o["Key"])

    deadline = time.time() + 240
    while parts() < 2 and runner.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    assert runner.is_alive(), f"the run ended before the outage: {outcome}"
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(10)
    os.kill(proc.pid, signal.SIGCONT)
    runner.join(timeout=600)
    assert not runner.is_alive()
    opts = ObjectStore.from_env(endpoint=endpoint).lance_options()
    if "error" in outcome:
        print("S3 outage: the run failed:", type(outcome["error"]).__name__, str(outcome["error"])[:300])
        again = run_job(job, progress=False)  # resumes what was staged before the outage
        print(f"S3 outage: rerun resumed {again.rows_resumed} staged rows")
    else:
        print("S3 outage: the run rode it out:", outcome["summary"].rows_embedded, "rows")
    tbl = open_table(uri, storage_options=opts)
    audit = audit_table(uri, rows, minilm_path, storage_options=opts)
    print("S3 outage:", audit)
    assert audit.clean, audit
    assert [r["status"] for r in tbl.runs()][-1] == "committed"
    assert staged_runs(uri, opts) == []
