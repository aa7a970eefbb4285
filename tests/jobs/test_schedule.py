"""Schedules: cron parsing, due slots, catch-up, no overlap, outcomes. A movable clock and cheap commands,
plus real `embedjob` processes for the CLI (a job that fails its checks costs seconds, no Ray)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobs.cli import app
from jobs.schedule import FireKind, FireState, ScheduleError, Scheduler, parse_cron

from ..jobfiles import write_job

runner = CliRunner()


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, start: str) -> None:
        self.now = _ts(start)

    def __call__(self) -> float:
        return self.now

    def set(self, text: str) -> None:
        self.now = _ts(text)


def _py(code: str):
    """A local command that runs ``code`` instead of the job (the job path is ignored)."""
    return lambda job: [sys.executable, "-c", code]


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """A valid job file (nothing runs it: the tests fire cheap commands in its place)."""
    return write_job(
        tmp_path / "job.toml",
        granularities=["l2_d32"],
        input={"uri": "docs.parquet"},
        model={"path": "model"},
        output={"uri": "out.lance"},
    )


@pytest.fixture
def clock() -> Clock:
    return Clock("2026-11-23 01:00:00")


def _scheduler(tmp_path: Path, clock: Clock, code: str = "pass") -> Scheduler:
    return Scheduler(tmp_path / "state", clock=clock, local_command=_py(code))


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 2 * *", "cron expression '0 2 * *' has 4 field(s); expected 5"),
        ("", "cron expression '' has 0 field(s); expected 5"),
        ("0 0 2 * * *", "cron expression '0 0 2 * * *' has 6 field(s); expected 5"),
        ("0 25 * * *", "cron expression '0 25 * * *' is not valid"),
        ("every night", "cron expression 'every night' has 2 field(s)"),
        ("@sometimes", "cron expression '@sometimes' is not valid"),
    ],
)
def test_bad_cron_expressions_name_the_value(expr, message):
    with pytest.raises(ScheduleError) as err:
        parse_cron(expr)
    assert message in str(err.value)


def test_cron_aliases_and_spacing_are_accepted():
    assert parse_cron("@daily") == "@daily"
    assert parse_cron("  0  2 * *   1-5 ") == "0 2 * * 1-5"


def test_add_rejects_bad_names_zones_jobs_and_duplicates(tmp_path, clock, job):
    sched = _scheduler(tmp_path, clock)
    with pytest.raises(ScheduleError, match="schedule name 'bad name' is not allowed"):
        sched.add("bad name", job, "0 2 * * *")
    with pytest.raises(ScheduleError, match="unknown time zone 'Mars/Olympus'"):
        sched.add("n", job, "0 2 * * *", timezone="Mars/Olympus")
    with pytest.raises(ScheduleError, match="job file does not exist"):
        sched.add("n", tmp_path / "missing.toml", "0 2 * * *")
    with pytest.raises(ScheduleError, match="not a Ray Jobs API address"):
        sched.add("n", job, "0 2 * * *", address="ray://head:10001")
    sched.add("n", job, "0 2 * * *")
    with pytest.raises(ScheduleError, match="a schedule named 'n' exists"):
        sched.add("n", job, "0 3 * * *")
    assert [s.name for s in sched.schedules()] == ["n"]


def test_remove_forgets_the_schedule_and_names_known_ones(tmp_path, clock, job):
    sched = _scheduler(tmp_path, clock)
    sched.add("a", job, "0 2 * * *")
    sched.add("b", job, "0 3 * * *")
    assert sched.remove("a").name == "a"
    with pytest.raises(ScheduleError, match="no schedule named 'a'; known: b"):
        sched.remove("a")
    assert [s.name for s in sched.schedules()] == ["b"]


# ----------------------------------------------------------------- due slots


def test_first_fire_is_the_first_slot_after_adding(tmp_path, clock, job):
    sched = _scheduler(tmp_path, clock)
    s = sched.add("nightly", job, "0 2 * * *", timezone="UTC")
    assert sched.next_fire(s) == _ts("2026-11-23 02:00:00")
    clock.set("2026-11-23 01:59:59")
    assert sched.run_due() == []
    clock.set("2026-11-23 02:00:00")  # exactly on the slot: due
    (fire,) = sched.run_due()
    assert fire.slot == _ts("2026-11-23 02:00:00")
    assert fire.state == "running" and fire.kind == "local" and fire.pid
    assert fire.message == fire.note == ""
    assert sched.run_due() == []  # the slot is taken
    assert sched.next_fire(sched.get("nightly")) == _ts("2026-11-24 02:00:00")


def test_missed_slots_fire_once_on_start_up(tmp_path, clock, job):
    sched = _scheduler(tmp_path, clock)
    sched.add("nightly", job, "0 2 * * *", timezone="UTC")
    # the scheduler was down for three nights: one fire, for the latest slot
    clock.set("2026-11-26 09:30:00")
    restarted = _scheduler(tmp_path, clock)
    (fire,) = restarted.run_due()
    assert fire.slot == _ts("2026-11-26 02:00:00")
    assert "caught up: slots since 2026-11-23T02:00:00+00:00 were missed; fired once" in fire.note
    assert restarted.run_due() == []
    assert restarted.wait([fire], timeout_s=30, poll_s=0.05)[0].state == "succeeded"
    assert len(restarted.fires("nightly")) == 1
    assert restarted.next_fire(restarted.get("nightly")) == _ts("2026-11-27 02:00:00")


def test_a_fire_is_skipped_while_the_previous_run_goes_on(tmp_path, clock, job):
    sched = _scheduler(tmp_path, clock, code="import time; time.sleep(60)")
    sched.add("hourly", job, "0 * * * *", timezone="UTC")
    clock.set("2026-11-23 02:00:10")
    (first,) = sched.run_due()
    assert first.state == "running"
    clock.set("2026-11-23 03:00:05")
    (second,) = sched.run_due()
    assert second.state == "skipped"
    assert second.message == f"fire #{first.id} (pid {first.pid}) is still running"
    (row,) = sched.status()
    assert row.last_fire is not None and row.last_fire.id == first.id and row.skipped == 1
    # the long run is killed (no exit code recorded): the next slot sees it ended, records it, fires again
    os.killpg(first.pid, signal.SIGKILL)
    _wait_dead(first.pid)
    clock.set("2026-11-23 04:00:00")
    (third,) = sched.run_due()
    ended = sched.fire(first.id)
    assert ended.state == "failed"
    assert "ended without recording an exit code" in ended.message
    assert third.state == "running"
    os.killpg(third.pid, signal.SIGKILL)


def test_a_schedule_fires_on_demand_and_counts_as_its_latest_slot(tmp_path, clock, job):
    sched = _scheduler(tmp_path, clock, code="import time; time.sleep(60)")
    sched.add("nightly", job, "0 2 * * *", timezone="UTC")
    clock.set("2026-11-23 01:30:00")  # not due before 02:00
    assert sched.run_due() == []
    first = sched.fire_now("nightly")
    assert first.state == "running" and first.note == "fired on demand"
    again = sched.fire_now("nightly")  # still running: skipped, as a due slot would be
    assert again.state == "skipped" and f"fire #{first.id}" in again.message
    os.killpg(first.pid, signal.SIGKILL)
    _wait_dead(first.pid)
    clock.set("2026-11-23 02:00:05")  # the cron slot after the manual fire still fires
    (due,) = sched.run_due()
    assert due.state == "running" and due.id > again.id
    os.killpg(due.pid, signal.SIGKILL)
    with pytest.raises(ScheduleError, match="no schedule"):
        sched.fire_now("weekly")


def test_two_schedulers_on_one_state_dir_fire_a_slot_once(tmp_path, clock, job):
    one, two = _scheduler(tmp_path, clock), _scheduler(tmp_path, clock)
    one.add("nightly", job, "0 2 * * *", timezone="UTC")
    clock.set("2026-11-23 02:00:30")
    fired = one.run_due() + two.run_due()
    assert len(fired) == 1
    assert len(one.fires()) == 1


def test_time_zone_of_the_cron_fields(tmp_path, clock, job):
    sched = _scheduler(tmp_path, clock)
    s = sched.add("paris", job, "0 2 * * *", timezone="Europe/Paris")
    assert sched.next_fire(s) == _ts("2026-11-24 01:00:00")  # 02:00 in Paris is 01:00 UTC in winter


# ----------------------------------------------------------------- outcomes


def test_outcomes_exit_codes_and_logs_are_recorded(tmp_path, clock, job):
    sched = _scheduler(tmp_path, clock, code="import sys; print('hello from the run'); sys.exit(3)")
    sched.add("failing", job, "*/5 * * * *", timezone="UTC")
    clock.set("2026-11-23 01:05:00")
    (fire,) = sched.run_due()
    (done,) = sched.wait([fire], timeout_s=30, poll_s=0.05)
    assert done.state == "failed" and done.exit_code == 3
    assert done.finished_at is not None and done.finished_at >= done.fired_at - 1
    assert done.outcome() == "failed (exit 3)"
    assert "hello from the run" in Path(done.log_path or "").read_text()
    sched.local_command = _py("pass")
    clock.set("2026-11-23 01:10:00")
    (ok,) = sched.wait(sched.run_due(), timeout_s=30, poll_s=0.05)
    assert ok.outcome() == "succeeded (exit 0)"
    (row,) = sched.status()
    assert row.last_fire is not None and row.last_fire.id == ok.id
    assert row.next_fire == _ts("2026-11-23 01:15:00")
    assert [f.state for f in sched.fires("failing")] == ["succeeded", "failed"]


def test_outcome_is_recorded_after_the_scheduler_that_fired_it_is_gone(tmp_path, clock, job):
    first = _scheduler(tmp_path, clock, code="import time, sys; time.sleep(0.5); sys.exit(4)")
    first.add("n", job, "0 2 * * *", timezone="UTC")
    clock.set("2026-11-23 02:00:00")
    (fire,) = first.run_due()
    del first  # e.g. `schedule run-due` returned; the run goes on and writes its exit code
    later = _scheduler(tmp_path, clock)
    (done,) = later.wait([fire], timeout_s=30, poll_s=0.05)
    assert (done.state, done.exit_code) == ("failed", 4)


# ----------------------------------------------------------------- the store on disk

# What the first embedjob with schedules wrote (its schema, verbatim, and ``PRAGMA user_version = 1``):
# databases made by it must open unchanged.
_V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT,
    address TEXT,
    created_at REAL NOT NULL,
    last_slot REAL
);
CREATE TABLE IF NOT EXISTS fires (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule TEXT NOT NULL,
    slot REAL NOT NULL,
    fired_at REAL NOT NULL,
    state TEXT NOT NULL,
    kind TEXT NOT NULL,
    finished_at REAL,
    pid INTEGER,
    pid_start INTEGER,
    submission_id TEXT,
    exit_code INTEGER,
    ray_status TEXT,
    log_path TEXT,
    message TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS fires_by_schedule ON fires (schedule, id);
"""


def _v1_database(path: Path) -> None:
    """A schedule database as version 1 wrote it: WAL, its schema, user_version 1."""
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_V1_SCHEMA)
    db.execute("PRAGMA user_version = 1")
    db.close()


def _on_disk(path: Path) -> tuple[int, list[tuple]]:
    db = sqlite3.connect(path)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        schema = db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        db.close()
    return version, schema


def test_a_version_1_database_is_migrated_in_place_and_keeps_its_rows(tmp_path, clock, job):
    db_path = tmp_path / "state" / "schedule.db"
    _v1_database(db_path)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute(
        "INSERT INTO schedules (name, job, cron, timezone, address, created_at, last_slot) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        ("nightly", str(job), "0 2 * * *", "UTC", None, _ts("2026-11-20 01:00:00"), _ts("2026-11-22 02:00:00")),
    )
    db.execute(
        "INSERT INTO fires (schedule, slot, fired_at, state, kind, finished_at, exit_code, log_path) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ("nightly", _ts("2026-11-22 02:00:00"), _ts("2026-11-22 02:00:01"), "failed", "local", 1.0, 3, "x.log"),
    )
    db.close()
    assert _on_disk(db_path)[0] == 1
    sched = _scheduler(tmp_path, clock)
    version, schema = _on_disk(db_path)
    assert version == 2  # migration 2 applied: a fire's counts
    (fires_sql,) = [sql for kind, name, sql in schema if name == "fires"]
    assert "counts TEXT NOT NULL DEFAULT ''" in fires_sql
    (fire,) = sched.fires("nightly")
    assert (fire.state, fire.kind, fire.exit_code, fire.outcome(), fire.counts) == (
        FireState.FAILED,
        FireKind.LOCAL,
        3,
        "failed (exit 3)",
        "",
    )
    again = _on_disk(db_path)
    _scheduler(tmp_path, clock)  # opening an up-to-date database writes nothing
    assert _on_disk(db_path) == again
    assert sched.next_fire(sched.get("nightly")) == _ts("2026-11-23 02:00:00")


def test_a_new_database_has_the_migrated_schema_and_keeps_state_strings(tmp_path, clock, job):
    _v1_database(tmp_path / "old" / "schedule.db")
    migrated = Scheduler(tmp_path / "old", clock=clock).db_path  # a version-1 file, migrated
    sched = _scheduler(tmp_path, clock)
    assert _on_disk(sched.db_path) == _on_disk(migrated)  # new or migrated: one schema
    sched.add("nightly", job, "0 2 * * *", timezone="UTC")
    clock.set("2026-11-23 02:00:00")
    (fire,) = sched.run_due()
    sched.wait([fire], timeout_s=30, poll_s=0.05)
    db = sqlite3.connect(sched.db_path)
    try:
        rows = db.execute("SELECT state, kind, typeof(state) FROM fires").fetchall()
    finally:
        db.close()
    assert rows == [("succeeded", "local", "text")]
    assert [s.value for s in FireState] == ["starting", "running", "succeeded", "failed", "skipped"]


def test_a_database_from_a_newer_embedjob_is_refused(tmp_path, clock):
    db_path = tmp_path / "state" / "schedule.db"
    _v1_database(db_path)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA user_version = 7")
    db.close()
    with pytest.raises(ScheduleError, match=r"schedule\.db was written by a newer embedjob \(schema 7\)"):
        _scheduler(tmp_path, clock)
    assert _on_disk(db_path)[0] == 7


# ----------------------------------------------------------------- CLI (real processes)


def test_cli_add_list_remove(tmp_path, job):
    state = str(tmp_path / "state")
    out = runner.invoke(app, ["schedule", "add", "nightly", str(job), "--cron", "0 2 * * *", "--state-dir", state])
    assert out.exit_code == 0, out.output
    assert "schedule nightly: 0 2 * * *" in out.output and "next 20" in out.output
    out = runner.invoke(app, ["schedule", "add", "bad", str(job), "--cron", "0 2 * *", "--state-dir", state])
    assert out.exit_code == 2
    assert "cron expression '0 2 * *' has 4 field(s); expected 5" in out.output
    out = runner.invoke(app, ["schedule", "list", "--state-dir", state])
    assert out.exit_code == 0, out.output
    assert "nightly" in out.output and "never" in out.output and "next fire" in out.output
    out = runner.invoke(app, ["schedule", "remove", "nightly", "--state-dir", state])
    assert out.exit_code == 0 and "removed schedule nightly" in out.output
    out = runner.invoke(app, ["schedule", "list", "--state-dir", state])
    assert "no schedules" in out.output


def test_cli_state_dir_from_the_environment(tmp_path, job, monkeypatch):
    monkeypatch.setenv("EMBEDJOB_STATE_DIR", str(tmp_path / "env-state"))
    out = runner.invoke(app, ["schedule", "add", "n", str(job), "--cron", "@daily"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "env-state" / "schedule.db").is_file()


def test_run_due_fires_the_real_job_command_and_records_its_failure(tmp_path, job):
    """`embedjob schedule run-due --wait` runs `python -m jobs.cli run JOB`: this job's model dir is
    missing, so the run fails its checks (exit 2) before Ray starts."""
    state = tmp_path / "state"
    Scheduler(state, clock=Clock("2026-11-20 01:00:00")).add("nightly", job, "0 2 * * *", timezone="UTC")
    exe = Path(sys.executable).with_name("embedjob")
    out = subprocess.run(
        [str(exe), "schedule", "run-due", "--wait", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "nightly: fire #1" in out.stdout and "failed (exit 2)" in out.stdout
    (fire,) = Scheduler(state).fires("nightly")
    log = Path(fire.log_path or "").read_text()
    assert "model 'model'" in log and "not a local directory" in log  # a relative name that is nowhere
    listing = runner.invoke(app, ["schedule", "list", "--state-dir", str(state)])
    assert "failed (exit 2)" in listing.output
    # fired on demand, through the CLI, the same way
    out = subprocess.run(
        [str(exe), "schedule", "fire", "nightly", "--wait", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 1 and "nightly: fire #2" in out.stdout and "failed (exit 2)" in out.stdout, out.stdout


def test_serve_catches_up_once_and_stops_on_sigterm(tmp_path, job):
    state = tmp_path / "state"
    Scheduler(state, clock=Clock("2026-11-20 01:00:00")).add("nightly", job, "0 2 * * *", timezone="UTC")
    exe = Path(sys.executable).with_name("embedjob")
    proc = subprocess.Popen(
        [str(exe), "schedule", "serve", "--poll", "0.5", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not Scheduler(state).fires("nightly"):
            time.sleep(0.2)
        time.sleep(1.5)  # a few more passes: still one fire for the missed slots
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "SIGTERM: stopping the scheduler" in output and "scheduler stopped" in output
    fires = Scheduler(state).fires("nightly")
    assert len(fires) == 1, fires
    assert "caught up" in fires[0].note


def _wait_dead(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat")
        if not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] in ("Z", "X"):
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still alive")


def test_a_fired_runs_counts_show_in_schedule_list(tmp_path, tiny_bert_dir):
    """A real run fired by the scheduler writes its summary; `schedule list` shows what it committed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"id": [f"d{i}" for i in range(20)], "text": [f"text {i}" for i in range(20)]}),
        tmp_path / "docs.parquet",
    )
    job = write_job(
        tmp_path / "real.toml",
        granularities=["l2_d32"],
        input={"uri": str(tmp_path / "docs.parquet")},
        model={"path": str(tiny_bert_dir)},
        output={"uri": str(tmp_path / "out.lance")},
    )
    state = tmp_path / "state"
    Scheduler(state).add("nightly", job, "0 2 * * *", timezone="UTC")
    exe = Path(sys.executable).with_name("embedjob")
    out = subprocess.run(
        [str(exe), "schedule", "fire", "nightly", "--wait", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "committed version 1: 20 new, 0 changed, 0 unchanged, 0 deleted, 0 rejected" in out.stdout
    listing = runner.invoke(app, ["schedule", "list", "--state-dir", str(state)])
    assert "counts     committed version 1: 20 new" in listing.output, listing.output
