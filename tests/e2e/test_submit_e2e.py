"""Submission through the Ray Jobs API and a schedule firing through it, against a real
`ray start --head` cluster on loopback with its dashboard (issue 5, fault test 6).

The cluster's `python` is this venv's (its bin dir first on the cluster's PATH), as on a cluster
image where Ray's interpreter is the one on the PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cluster import RayJobsClient
from jobs.cli import app
from jobs.schedule import Scheduler
from storage import TableNotFoundError, open_table

from ..jobfiles import write_job
from ..raynodes import free_port, ray_head_process

EXE = Path(sys.executable).with_name("embedjob")
runner = CliRunner()


@pytest.fixture(scope="module")
def ray_dashboard():
    """A `ray start --head` cluster with the dashboard on 127.0.0.1; yields the Jobs API URL."""
    with ray_head_process(dashboard=True) as (proc, _port, dash):
        url = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 90
        while True:
            try:
                client = RayJobsClient(url, timeout_s=2)
                break
            except Exception:
                if proc.poll() is not None:
                    raise RuntimeError("ray start --head exited") from None
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        # ready means a job runs: the dashboard answers before the node's agent takes jobs
        ready = client.wait(client.submit("echo ready"), timeout_s=120, poll_s=0.5)
        assert ready.status == "SUCCEEDED", ready
        yield url


@pytest.fixture
def small_job(tmp_path, tiny_bert_dir) -> Path:
    """A job with relative paths (resolved on the submitting side): 40 rows, the tiny BERT."""
    pq.write_table(
        pa.table({"id": [f"d{i}" for i in range(40)], "text": [f"text number {i} of the corpus" for i in range(40)]}),
        tmp_path / "docs.parquet",
    )
    shutil.move(str(tiny_bert_dir), tmp_path / "model")
    return write_job(
        tmp_path / "job.toml",
        granularities=["l2_d32", "l4_d64"],
        input={"uri": "docs.parquet"},
        model={"path": "model"},
        output={"uri": "out.lance"},
    )


def _embedjob(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=tempfile.gettempdir()
    )


def test_submit_status_logs(ray_dashboard, small_job, tmp_path):
    t0 = time.monotonic()
    out = _embedjob("submit", str(small_job), "--address", ray_dashboard)
    assert out.returncode == 0, out.stdout + out.stderr
    submission_id = out.stdout.strip().splitlines()[-1]
    assert submission_id.startswith("raysubmit_"), out.stdout
    assert f"submitted {small_job} to {ray_dashboard}" in out.stderr
    status = _embedjob("status", submission_id, "--address", ray_dashboard, "--wait")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"{submission_id}: SUCCEEDED" in status.stdout
    table = open_table(str(tmp_path / "out.lance"))
    assert table.count_rows() == 40
    assert sorted(table.to_arrow().column("id").to_pylist()) == sorted(f"d{i}" for i in range(40))
    logs = _embedjob("logs", submission_id)  # no --address: where it was submitted is remembered
    assert logs.returncode == 0, logs.stderr
    assert "committed" in logs.stdout and "40 / 40 / 0" in logs.stdout
    # the address may come from the environment instead
    env_status = subprocess.run(
        [str(EXE), "status", submission_id],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "RAY_API_SERVER_ADDRESS": ray_dashboard},
    )
    assert env_status.returncode == 0 and "SUCCEEDED" in env_status.stdout
    print(f"submit -> SUCCEEDED -> logs: {time.monotonic() - t0:.1f} s")


def test_errors_name_the_address_and_the_id(ray_dashboard, monkeypatch):
    t0 = time.monotonic()
    closed = f"127.0.0.1:{free_port()}"
    out = runner.invoke(app, ["status", "raysubmit_x", "--address", closed, "--timeout", "3"])
    assert out.exit_code == 2
    assert f"cannot reach the Ray Jobs API at 'http://{closed}'" in out.output
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    out = runner.invoke(app, ["stop", "raysubmit_x"])
    assert out.exit_code == 2
    assert "no Ray Jobs API address" in out.output and "RAY_ADDRESS is 'auto', not an http(s):// URL" in out.output
    out = runner.invoke(app, ["logs", "raysubmit_nope", "--address", ray_dashboard])
    assert out.exit_code == 2 and f"no Ray job 'raysubmit_nope' at {ray_dashboard}" in out.output
    assert time.monotonic() - t0 < 30


def test_stop_a_running_job(ray_dashboard, small_job, tmp_path):
    t0 = time.monotonic()
    out = _embedjob("submit", str(small_job), "--address", ray_dashboard)
    assert out.returncode == 0, out.stdout + out.stderr
    submission_id = out.stdout.strip().splitlines()[-1]
    client = RayJobsClient(ray_dashboard)
    deadline = time.monotonic() + 120
    while client.info(submission_id).status == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.info(submission_id).status == "RUNNING"
    stopped = _embedjob("stop", submission_id, "--address", ray_dashboard)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"{submission_id}: stop requested; status STOPPED" in stopped.stdout
    with pytest.raises(TableNotFoundError):  # a stopped run commits nothing
        open_table(str(tmp_path / "out.lance"))
    print(f"submit -> RUNNING -> stop -> STOPPED: {time.monotonic() - t0:.1f} s")


def test_a_schedule_fires_through_the_jobs_api(ray_dashboard, small_job, tmp_path):
    t0 = time.monotonic()
    state = tmp_path / "state"
    added_at = datetime(2026, 11, 20, 1, 0, tzinfo=UTC).timestamp()  # so that a slot is due now
    Scheduler(state, clock=lambda: added_at).add(
        "nightly", small_job, "0 2 * * *", address=ray_dashboard, timezone="UTC"
    )
    out = _embedjob("schedule", "run-due", "--wait", "--state-dir", str(state))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "nightly: fire #1" in out.stdout and "succeeded (exit 0, Ray SUCCEEDED" in out.stdout
    (fire,) = Scheduler(state).fires("nightly")
    assert fire.kind == "ray" and fire.state == "succeeded" and fire.ray_status == "SUCCEEDED"
    assert fire.submission_id and fire.submission_id.startswith("embedjob-nightly-")
    info = RayJobsClient(ray_dashboard).info(fire.submission_id)
    assert info.status == "SUCCEEDED" and info.metadata["embedjob_schedule"] == "nightly"
    assert open_table(str(tmp_path / "out.lance")).count_rows() == 40
    listing = _embedjob("schedule", "list", "--state-dir", str(state))
    assert listing.returncode == 0, listing.stderr
    assert "succeeded (exit 0, Ray SUCCEEDED" in listing.stdout and ray_dashboard in listing.stdout
    # the run's counts, from the summary line it printed last in its log on the cluster
    assert fire.counts == "committed version 1: 40 new, 0 changed, 0 unchanged, 0 deleted, 0 rejected"
    assert "committed version 1: 40 new" in listing.stdout
    again = _embedjob("schedule", "run-due", "--state-dir", str(state))
    assert "nothing due" in again.stdout  # the slot fired once
    print(f"schedule run-due (Ray) -> succeeded: {time.monotonic() - t0:.1f} s")


@pytest.mark.slow  # (the default suite's time: a fire that succeeds through the Jobs API stays in it)
def test_a_scheduled_fire_that_fails_on_the_cluster_is_recorded(ray_dashboard, small_job, tmp_path):
    """The job file is valid where it is submitted, but its model dir is gone: the run fails its
    checks on the cluster (exit 2), and the schedule records Ray's FAILED with the exit code."""
    t0 = time.monotonic()
    state = tmp_path / "state"
    added_at = datetime(2026, 11, 20, 1, 0, tzinfo=UTC).timestamp()
    Scheduler(state, clock=lambda: added_at).add("broken", small_job, "@daily", address=ray_dashboard)
    shutil.rmtree(tmp_path / "model")
    out = _embedjob("schedule", "run-due", "--wait", "--state-dir", str(state))
    assert out.returncode == 1, out.stdout + out.stderr
    (fire,) = Scheduler(state).fires("broken")
    assert (fire.state, fire.ray_status, fire.exit_code) == ("failed", "FAILED", 2), fire
    assert "exit code 2" in fire.message
    logs = _embedjob("logs", fire.submission_id or "", "--address", ray_dashboard)
    assert "or name a local directory" in logs.stdout  # the model is gone: not a directory, nor in the cache
    listing = _embedjob("schedule", "list", "--state-dir", str(state))
    assert "failed (exit 2, Ray FAILED" in listing.stdout
    print(f"schedule run-due (Ray) -> failed: {time.monotonic() - t0:.1f} s")
