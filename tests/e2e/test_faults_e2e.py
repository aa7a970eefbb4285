"""Real process kills: the driver SIGKILLed mid-run and resumed, and a second run against a live one.

The run under test is a separate ``embedjob run`` process, killed as a whole process group: with its own
embedded Ray (own temp dir) for a night of more than ``in_process_below`` rows (the slow test), in that process
for the small nights of the default tests (their starting tables are written in the test's process, no Ray).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench.corpora import passages
from jobs import run_job
from jobs.cli import app
from storage import TableLocked, open_table, staged_runs, staging_dir

from ..hosts import take_lock_from_another_host
from ..jobfiles import write_embedded_table, write_job
from ..s3proxy import S3FaultProxy
from .audit import audit_table


@pytest.fixture
def driver(tmp_path):
    """Start ``embedjob run`` in its own process group; teardown kills whatever is left of it."""
    procs: list[subprocess.Popen] = []
    ray_tmp = tempfile.mkdtemp(prefix="rd", dir="/tmp")  # Ray's sockets need a short path

    def start(job: Path, **extra_env: str) -> subprocess.Popen:
        env = {
            **os.environ,
            **extra_env,
            "RAY_TMPDIR": ray_tmp,
            "EMBEDJOB_STATE_DIR": str(tmp_path / "state"),
            "HF_HUB_OFFLINE": "1",
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        }
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", "run", str(job), "--no-progress"],
            stdout=(tmp_path / "driver.log").open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
    subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver exited ({proc.returncode}) before {what}: {log.read_text()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow  # 60 s; the default suite kills drivers in the two tests below
def test_driver_killed_mid_run_then_resumed(ray_local, tmp_path, minilm_path, driver, monkeypatch):
    """Fault test 2, and fault test 4 against a live driver in another process."""
    monkeypatch.setenv("EMBEDJOB_STATE_DIR", str(tmp_path / "state"))
    texts = passages(1250, words=40)
    rows = {f"p{i:05d}": t for i, t in enumerate(texts)}
    corpus = tmp_path / "docs.parquet"
    out = tmp_path / "out" / "docs.lance"
    job = write_job(
        tmp_path / "job.toml",
        granularities=["l2_d32", "l6_d384"],
        input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(minilm_path)},
        output={"uri": str(out)},
        cluster={"rows_per_block": 25, "rows_per_part": 50},
    )
    first = dict(list(rows.items())[:50])
    pq.write_table(pa.table({"doc_id": list(first), "body": list(first.values())}), corpus)
    assert run_job(job, progress=False).table_version == 1
    pq.write_table(pa.table({"doc_id": list(rows), "body": list(rows.values())}), corpus)

    proc = driver(job)
    log = tmp_path / "driver.log"
    lock_file = Path(staging_dir(str(out))) / "LOCK.json"
    _wait_for(lock_file.exists, 120, "the driver took the table's lock", proc, log)
    # a second run while the first is alive: refused, naming the holder
    with pytest.raises(TableLocked, match=rf"pid {proc.pid}\b"):
        run_job(job, progress=False)

    def parts() -> list[Path]:
        return list(Path(staging_dir(str(out))).glob("*/parts/*.json"))

    _wait_for(lambda: len(parts()) >= 4, 240, "4 staged parts", proc, log)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]

    # killed: the table did not move, the staged work is on disk
    assert lance.dataset(str(out)).version == 1 and lance.dataset(str(out)).count_rows() == 50
    (staging,) = staged_runs(str(out))
    staged = sum(len(p.ids) for p in staging.parts())
    assert staging.read_record().status == "running"
    assert 0 < staged < 1200, staged

    shown = CliRunner().invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0, shown.output
    assert "runs that did not commit" in shown.output and staging.run_id in shown.output
    assert "interrupted" in shown.output

    result = CliRunner().invoke(app, ["resume", staging.run_id, "--no-progress"])
    assert result.exit_code == 0, result.output
    tbl = open_table(str(out))
    (last,) = [r for r in tbl.runs() if r["run_id"] == staging.run_id]
    print(f"driver kill: {staged} rows staged before the kill, {last['rows_embedded'] - staged} embedded on resume")
    assert last["rows_resumed"] == staged
    assert last["rows_embedded"] == 1200 and last["rows_unchanged"] == 50
    assert tbl.version == 2
    audit = audit_table(str(out), rows, minilm_path)
    print("driver kill:", audit)
    assert audit.clean, audit
    assert staged_runs(str(out)) == []
    assert not lock_file.exists()


def test_a_run_whose_lock_was_taken_over_never_commits(tmp_path, tiny_bert_dir, driver, monkeypatch):
    """The driver hangs (SIGSTOP) past its lease; a run on another host takes the table over; the driver
    wakes up, notices, and fails before its commit: the table stays as it was."""
    monkeypatch.setenv("EMBEDJOB_STATE_DIR", str(tmp_path / "state"))
    rows = {f"p{i:04d}": t for i, t in enumerate(passages(400, words=40))}
    corpus = tmp_path / "docs.parquet"
    out = tmp_path / "out" / "docs.lance"
    job = write_job(
        tmp_path / "job.toml",
        granularities=["l2_d32"],
        input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(tiny_bert_dir)},
        output={"uri": str(out)},
        cluster={"rows_per_block": 20, "rows_per_part": 20},
    )
    first = dict(list(rows.items())[:20])  # the table the night finds: written here, no Ray (the lock is the point)
    assert write_embedded_table(str(out), tiny_bert_dir, first.values(), first, ["l2_d32"]) == 1
    pq.write_table(pa.table({"doc_id": list(rows), "body": list(rows.values())}), corpus)

    proc = driver(job, EMBEDJOB_LOCK_LEASE_S="4")
    log = tmp_path / "driver.log"
    lock_file = Path(staging_dir(str(out))) / "LOCK.json"
    _wait_for(lambda: list(Path(staging_dir(str(out))).glob("*/parts/*.json")), 240, "a staged part", proc, log)
    os.kill(proc.pid, signal.SIGSTOP)  # the driver hangs; its heartbeat with it
    try:
        time.sleep(5)  # > the 4 s lease
        assert take_lock_from_another_host(str(out)) == "taken"
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    try:
        assert proc.wait(timeout=240) == 2, log.read_text()[-3000:]
        text = log.read_text()
        assert "lost the lock on" in text and "to run taker (host another-host" in text
        assert "no longer holds the lock" in text and "nothing was committed" in text
        assert lance.dataset(str(out)).version == 1 and lance.dataset(str(out)).count_rows() == 20
        failed = open_table(str(out)).runs()[-1]
        assert failed["status"] == "failed" and "LockLost" in failed["error"]
    finally:
        lock_file.unlink(missing_ok=True)  # the taker's (its process is gone)


def test_a_driver_killed_after_its_commit_is_recorded_committed(ray_local, s3_env, tmp_path, tiny_bert_dir, driver):
    """The store stops answering for the runs table right after the table's commit; the driver is SIGKILLed
    there. The commit is the truth: the next run records that run committed (never failed or abandoned)."""
    s3_env["client"].create_bucket(Bucket="crash")
    rows = {f"p{i:03d}": t for i, t in enumerate(passages(60, words=30))}
    corpus = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"doc_id": list(rows), "body": list(rows.values())}), corpus)
    uri = "s3://crash/out/docs.lance"
    direct = {
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "aws_endpoint": s3_env["endpoint"],
        "aws_region": "us-east-1",
        "allow_http": "true",
    }
    # the table the night finds (10 of the rows, no runs table yet): written here, no Ray
    first = dict(list(rows.items())[:10])
    assert write_embedded_table(uri, tiny_bert_dir, first.values(), first, ["l2_d32"], storage_options=direct) == 1
    with S3FaultProxy(s3_env["endpoint"]) as proxy:
        job = write_job(
            tmp_path / "job.toml",
            granularities=["l2_d32"],
            input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
            model={"path": str(tiny_bert_dir)},
            output={"uri": uri},
            storage={"endpoint": proxy.endpoint},
        )
        with proxy.hang("docs_runs.lance") as stuck:
            proc = driver(job)
            log = tmp_path / "driver.log"
            _wait_for(lambda: stuck.hits > 0, 240, "the run to write its run record", proc, log)
            assert lance.dataset(uri, storage_options=direct).version == 2  # committed before that
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        (staging,) = staged_runs(uri, direct)
        record = staging.read_record()
        assert (record.status, record.table_version, record.pending) == ("committed", 2, ["runs"])

        again = run_job(job, progress=False)  # the next night
    assert (again.rows_unchanged, again.table_version) == (60, 2)
    runs = open_table(uri, storage_options=direct).runs()
    assert [(r["run_id"], r["status"], r["table_version"], r["rows_embedded"]) for r in runs] == [
        (staging.run_id, "committed", 2, 50),
        (again.run_id, "committed", 2, 0),
    ]
    assert staged_runs(uri, direct) == []
    audit = audit_table(uri, rows, tiny_bert_dir, storage_options=direct)
    assert audit.clean, audit
