"""Cron schedules for jobs: a small SQLite store under a state dir, due computation by croniter,
and fires that run a job locally (a detached subprocess) or through a cluster's Ray Jobs API.

Rules the store keeps:
- a schedule fires at most once per pass however many of its slots were missed (a scheduler
  that was down for three nights runs the job once when it comes back, not three times);
- a fire whose previous run is still going is skipped (recorded, with the reason), never run twice;
- every fire is recorded: its slot, when it started and finished, its outcome (exit code or Ray
  job status), its pid or Ray submission id, its log file.

Two schedulers on one state dir (``serve`` and a ``run-due`` from system cron) claim each slot
in one SQLite transaction, so a slot fires once.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path

from storage import process_alive, process_start_ticks

from ._state import private_dir, state_dir

__all__ = [
    "Fire",
    "Schedule",
    "ScheduleError",
    "ScheduleStatus",
    "Scheduler",
    "default_state_dir",
    "parse_cron",
]

logger = logging.getLogger("jobs.schedule")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # whole name (fullmatch: no trailing newline)
_SCHEMA_VERSION = 1

# Runs the job, then writes its exit code next to the store atomically: the outcome survives
# the scheduler that started it (``run-due`` returns at once; ``serve`` may be restarted).
_WRAPPER = """\
import os, subprocess, sys
code = subprocess.call(sys.argv[2:])
tmp = sys.argv[1] + ".tmp"
with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
    fh.write(str(code))
os.replace(tmp, sys.argv[1])
sys.exit(code if code >= 0 else 128 - code)
"""


class ScheduleError(ValueError):
    """A bad schedule name, cron expression, time zone or job file, or an unknown schedule."""


@dataclass(frozen=True)
class Schedule:
    name: str
    job: str  # absolute path of the job file, read afresh at every fire
    cron: str
    timezone: str | None  # IANA name; None: the scheduler machine's local time
    address: str | None  # Ray Jobs API URL; None: run locally
    created_at: float
    last_slot: float | None  # the latest slot handled (fired or skipped)

    @property
    def target(self) -> str:
        return self.address or "local"


@dataclass(frozen=True)
class Fire:
    id: int
    schedule: str
    slot: float  # the cron time it fired for
    fired_at: float
    state: str  # starting | running | succeeded | failed | skipped
    kind: str  # local | ray
    finished_at: float | None = None
    pid: int | None = None
    pid_start: int | None = None  # the pid's start time (clock ticks since boot): a reused pid is not ours
    submission_id: str | None = None
    exit_code: int | None = None
    ray_status: str | None = None
    log_path: str | None = None
    message: str = ""  # why it was skipped or failed
    note: str = ""  # e.g. that it caught up on missed slots

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running")

    def outcome(self) -> str:
        """One line: state plus exit code or Ray status, e.g. ``failed (exit 2)``."""
        if self.state == "skipped":
            return f"skipped: {self.message}"
        detail = []
        if self.exit_code is not None:
            detail.append(f"exit {self.exit_code}")
        if self.ray_status:
            detail.append(f"Ray {self.ray_status}")
        if self.active and self.pid:
            detail.append(f"pid {self.pid}")
        if self.submission_id:
            detail.append(self.submission_id)
        if self.state == "failed" and self.message:
            detail.append(self.message)
        return self.state + (f" ({', '.join(detail)})" if detail else "")


@dataclass(frozen=True)
class ScheduleStatus:
    schedule: Schedule
    next_fire: float
    last_fire: Fire | None  # the latest fire that ran (skipped ones aside)
    skipped: int  # fires skipped since then


def default_state_dir() -> Path:
    """``EMBEDJOB_STATE_DIR``, else ``~/.embedjob`` (shared with the runs index of ``embedjob resume``)."""
    return state_dir()


def parse_cron(expr: str) -> str:
    """Check a five-field cron expression (or an alias like ``@daily``); returns it normalised."""
    from croniter import croniter

    text = " ".join(str(expr).split())
    fields = text.split(" ")
    if not text or (len(fields) != 5 and not (len(fields) == 1 and text.startswith("@"))):
        raise ScheduleError(
            f"cron expression {expr!r} has {len(fields) if text else 0} field(s); expected 5: "
            f"'minute hour day-of-month month day-of-week', e.g. '0 2 * * *' (02:00 every day), "
            f"or an alias: @hourly, @daily, @weekly, @monthly, @yearly"
        )
    try:
        croniter(text)
    except (ValueError, KeyError) as exc:
        raise ScheduleError(f"cron expression {expr!r} is not valid: {exc}") from None
    return text


def _zone(name: str | None) -> tzinfo:
    if name is None:
        from dateutil import tz

        local = tz.tzlocal()
        return local
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {name!r}: expected an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None


def next_after(cron: str, ts: float, zone: tzinfo) -> float:
    """The first slot of ``cron`` strictly after ``ts``."""
    from croniter import croniter

    return croniter(cron, datetime.fromtimestamp(ts, zone)).get_next(datetime).timestamp()


def _latest_due(cron: str, base: float, now: float, zone: tzinfo) -> float | None:
    """The latest slot in (base, now], or None when none is due yet."""
    from croniter import croniter

    first = next_after(cron, base, zone)
    if first > now:
        return None
    latest = croniter(cron, datetime.fromtimestamp(now, zone)).get_prev(datetime).timestamp()
    following = next_after(cron, latest, zone)
    if following <= now:  # ``now`` sits exactly on a slot: get_prev stepped over it
        latest = following
    return max(latest, first)


def _local_command(job: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "run", job, "--no-progress"]


class Scheduler:
    """The schedules under one state dir, and their fires.

    ``clock`` (Unix seconds) and ``local_command`` (job path -> argv) are injectable, so tests can
    move time and fire a cheap command; by default a local fire runs ``python -m jobs.cli run JOB``
    with this interpreter, its output in ``STATE_DIR/logs/``.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        local_command: Callable[[str], Sequence[str]] = _local_command,
        python: str = "python",
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.clock = clock
        self.local_command = local_command
        self.python = python  # the interpreter on a cluster's head node, for fires through the Jobs API
        self._children: dict[int, subprocess.Popen] = {}
        self.db_path = self.state_dir / "schedule.db"
        try:  # what it keeps (job paths, logs of runs) is for its owner only: folders 0700, files 0600
            for sub in ("logs", "exits"):
                private_dir(self.state_dir / sub)
            os.close(os.open(self.db_path, os.O_RDWR | os.O_CREAT, 0o600))  # (SQLite's -wal, -shm: the same)
        except OSError as exc:
            raise ScheduleError(f"cannot use {str(self.state_dir)!r} as the state dir: {exc}") from None
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise ScheduleError(f"{self.db_path} was written by a newer embedjob (schema {version})")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    # ------------------------------------------------------------------ schedules

    def add(
        self,
        name: str,
        job: str | os.PathLike[str],
        cron: str,
        *,
        address: str | None = None,
        timezone: str | None = None,
    ) -> Schedule:
        """Add a schedule; its first fire is its first slot after now. The job file is validated now."""
        from ._spec import JobSpecError, load_job

        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ScheduleError(
                f"schedule name {name!r} is not allowed: 1-64 letters, digits, '.', '_' or '-', starting with a "
                f"letter or digit"
            )
        cron = parse_cron(cron)
        _zone(timezone)
        path = Path(job).expanduser().resolve()
        try:
            load_job(path)
        except JobSpecError as exc:
            raise ScheduleError(f"schedule {name!r}: {exc}") from None
        if address is not None:
            from cluster import ClusterError, jobs_api_address

            try:
                address = jobs_api_address(address)
            except ClusterError as exc:
                raise ScheduleError(str(exc)) from None
        with self._db() as db:
            try:
                db.execute(
                    "INSERT INTO schedules (name, job, cron, timezone, address, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (name, str(path), cron, timezone, address, self.clock()),
                )
            except sqlite3.IntegrityError:
                raise ScheduleError(f"a schedule named {name!r} exists; remove it first") from None
        return self.get(name)

    def remove(self, name: str) -> Schedule:
        """Forget a schedule and its fire history (a run in progress is left to finish)."""
        schedule = self.get(name)
        with self._db() as db:
            db.execute("DELETE FROM fires WHERE schedule = ?", (name,))
            db.execute("DELETE FROM schedules WHERE name = ?", (name,))
        return schedule

    def get(self, name: str) -> Schedule:
        with self._db() as db:
            row = db.execute("SELECT * FROM schedules WHERE name = ?", (name,)).fetchone()
            known = [r[0] for r in db.execute("SELECT name FROM schedules ORDER BY name")] if row is None else []
        if row is None:
            raise ScheduleError(f"no schedule named {name!r}; known: {', '.join(known) or 'none'}")
        return _schedule(row)

    def schedules(self) -> list[Schedule]:
        with self._db() as db:
            return [_schedule(r) for r in db.execute("SELECT * FROM schedules ORDER BY name")]

    def next_fire(self, schedule: Schedule) -> float:
        """When it fires next: now if a slot is due (missed ones included), else its next slot."""
        base = schedule.last_slot if schedule.last_slot is not None else schedule.created_at
        return next_after(schedule.cron, base, _zone(schedule.timezone))

    def status(self) -> list[ScheduleStatus]:
        """Every schedule with its next fire and its last run (outcomes refreshed first)."""
        self.refresh()
        out = []
        with self._db() as db:
            for schedule in self.schedules():
                rows = db.execute(
                    "SELECT * FROM fires WHERE schedule = ? ORDER BY id DESC LIMIT 200", (schedule.name,)
                ).fetchall()
                fires = [_fire(r) for r in rows]
                last = next((f for f in fires if f.state != "skipped"), None)
                skipped = sum(1 for f in fires if f.state == "skipped" and (last is None or f.id > last.id))
                out.append(ScheduleStatus(schedule, self.next_fire(schedule), last, skipped))
        return out

    def fires(self, name: str | None = None, *, limit: int = 50) -> list[Fire]:
        """Recorded fires, newest first."""
        with self._db() as db:
            if name is None:
                rows = db.execute("SELECT * FROM fires ORDER BY id DESC LIMIT ?", (limit,))
            else:
                rows = db.execute("SELECT * FROM fires WHERE schedule = ? ORDER BY id DESC LIMIT ?", (name, limit))
            return [_fire(r) for r in rows]

    def fire(self, fire_id: int) -> Fire:
        with self._db() as db:
            row = db.execute("SELECT * FROM fires WHERE id = ?", (fire_id,)).fetchone()
        if row is None:
            raise ScheduleError(f"no fire #{fire_id}")
        return _fire(row)

    # ------------------------------------------------------------------ firing

    def run_due(self) -> list[Fire]:
        """Fire every schedule with a due slot, once each; returns the fires made (skipped ones too)."""
        self.refresh()
        now = self.clock()
        fires = []
        for schedule in self.schedules():
            try:
                fire = self._fire_if_due(schedule, now)
            except Exception as exc:  # one broken schedule must not stop the others
                logger.error("schedule %s: could not be fired: %s", schedule.name, exc)
                continue
            if fire is not None:
                fires.append(fire)
        return fires

    def _fire_if_due(self, schedule: Schedule, now: float) -> Fire | None:
        zone = _zone(schedule.timezone)
        base = schedule.last_slot if schedule.last_slot is not None else schedule.created_at
        slot = _latest_due(schedule.cron, base, now, zone)
        if slot is None:
            return None
        fire = self._claim(schedule, slot, now)
        if fire is None:
            return None  # another scheduler took this slot
        if fire.state == "starting":
            fire = self._launch(schedule, fire)
        return fire

    def refresh(self) -> list[Fire]:
        """Look at every fire still marked running and record the outcome of those that ended."""
        with self._db() as db:
            active = [_fire(r) for r in db.execute("SELECT * FROM fires WHERE state IN ('starting', 'running')")]
        done = []
        for fire in active:
            try:
                ended = self._check(fire)
            except Exception as exc:  # one fire that cannot be read must not stop the other schedules
                logger.warning("schedule %s: cannot tell how fire #%d ended: %s", fire.schedule, fire.id, exc)
                continue
            if ended is not None:
                done.append(ended)
        return done

    def wait(self, fires: Sequence[Fire], *, timeout_s: float | None = None, poll_s: float = 2.0) -> list[Fire]:
        """Block until these fires have ended (or ``timeout_s`` passed); returns their latest records."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self.refresh()
            latest = [self.fire(f.id) for f in fires]
            if not any(f.active for f in latest) or (deadline is not None and time.monotonic() >= deadline):
                return latest
            time.sleep(poll_s)

    def serve(
        self,
        *,
        poll_s: float = 30.0,
        stop: threading.Event | None = None,
        on_fire: Callable[[Fire], None] | None = None,
    ) -> None:
        """Fire due schedules until ``stop`` is set: at start-up (where missed slots fire once), then
        at each slot, looking at the store at least every ``poll_s`` seconds (new schedules, outcomes)."""
        if poll_s <= 0:
            raise ScheduleError(f"poll interval must be > 0 seconds, got {poll_s}")
        stop = stop or threading.Event()
        while not stop.is_set():
            wait = poll_s
            try:
                for fire in self.run_due():
                    if on_fire is not None:
                        on_fire(fire)
                now = self.clock()
                wait = min([poll_s, *(self.next_fire(s) - now for s in self.schedules())])
            except Exception:  # a long-running loop: one bad pass (a locked store, a full disk) is logged, not fatal
                logger.exception("scheduler pass failed; trying again in %.0f s", poll_s)
            stop.wait(max(wait, 0.2))

    def _claim(self, schedule: Schedule, slot: float, now: float) -> Fire | None:
        """Record the fire (or its skip) and move the schedule past ``slot``, in one transaction."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT last_slot FROM schedules WHERE name = ?", (schedule.name,)).fetchone()
            if row is None or row[0] != schedule.last_slot:
                db.execute("ROLLBACK")
                return None
            busy = db.execute(
                "SELECT * FROM fires WHERE schedule = ? AND state IN ('starting', 'running') ORDER BY id DESC",
                (schedule.name,),
            ).fetchone()
            kind = "ray" if schedule.address else "local"
            if busy is not None:
                prev = _fire(busy)
                where = f"pid {prev.pid}" if prev.pid else (prev.submission_id or "starting")
                state, message = "skipped", f"fire #{prev.id} ({where}) is still running"
            else:
                state, message = "starting", ""
            note = ""
            missed_from = self.next_fire(schedule)
            if missed_from < slot:
                note = f"caught up: slots since {_iso(missed_from, schedule.timezone)} were missed; fired once"
            cur = db.execute(
                "INSERT INTO fires (schedule, slot, fired_at, state, kind, message, note, finished_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (schedule.name, slot, now, state, kind, message, note, now if state == "skipped" else None),
            )
            db.execute("UPDATE schedules SET last_slot = ? WHERE name = ?", (slot, schedule.name))
            db.execute("COMMIT")
            fire_id = cur.lastrowid
        fire = self.fire(int(fire_id or 0))
        if fire.state == "skipped":
            logger.warning("schedule %s: slot %s skipped: %s", schedule.name, _iso(slot, schedule.timezone), message)
        return fire

    def _launch(self, schedule: Schedule, fire: Fire) -> Fire:
        if schedule.address:
            return self._launch_ray(schedule, fire)
        return self._launch_local(schedule, fire)

    def _launch_local(self, schedule: Schedule, fire: Fire) -> Fire:
        stamp = datetime.fromtimestamp(fire.slot, _zone(schedule.timezone)).strftime("%Y%m%dT%H%M")
        log_path = self.state_dir / "logs" / f"{schedule.name}-{stamp}-{fire.id}.log"
        exit_path = self._exit_path(fire.id)
        argv = [sys.executable, "-c", _WRAPPER, str(exit_path), *self.local_command(schedule.job)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        try:
            with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=str(Path(schedule.job).parent),
                    env=env,
                    start_new_session=True,  # survives this scheduler; a terminal's Ctrl-C doesn't reach it
                )
        except OSError as exc:
            return self._update(fire.id, state="failed", finished_at=self.clock(), message=f"could not start: {exc}")
        self._children[fire.id] = proc
        logger.info("schedule %s: fired #%d locally (pid %d), log %s", schedule.name, fire.id, proc.pid, log_path)
        return self._update(
            fire.id, state="running", pid=proc.pid, pid_start=process_start_ticks(proc.pid), log_path=str(log_path)
        )

    def _launch_ray(self, schedule: Schedule, fire: Fire) -> Fire:
        from ._submit import submit_job

        stamp = datetime.fromtimestamp(fire.slot, _zone(schedule.timezone)).strftime("%Y%m%dT%H%M")
        sid = f"embedjob-{schedule.name}-{stamp}-{secrets.token_hex(3)}"
        # recorded before submitting: a scheduler that dies in between finds the job by this id
        self._update(fire.id, submission_id=sid)
        try:
            submit_job(
                schedule.job,
                address=schedule.address,
                python=self.python,
                submission_id=sid,
                metadata={"embedjob_schedule": schedule.name, "embedjob_fire": str(fire.id)},
            )
        except Exception as exc:  # an unreachable cluster, a job file gone bad: this fire failed, the others go on
            return self._update(fire.id, state="failed", finished_at=self.clock(), message=f"not submitted: {exc}")
        logger.info("schedule %s: fired #%d on %s as %s", schedule.name, fire.id, schedule.address, sid)
        return self._update(fire.id, state="running")

    def _check(self, fire: Fire) -> Fire | None:
        """The fire's outcome if it has ended since we last looked (recorded), else None."""
        if fire.kind == "ray":
            return self._check_ray(fire)
        proc = self._children.get(fire.id)
        if proc is not None and proc.poll() is not None:
            del self._children[fire.id]  # reaped: no zombie left to look alive
        exit_path = self._exit_path(fire.id)
        if exit_path.exists():
            text = exit_path.read_text(errors="replace").strip()
            try:
                code = int(text)
            except ValueError:  # a damaged exit file: this fire's outcome is unknown, and only this fire's
                return self._update(
                    fire.id,
                    state="failed",
                    finished_at=exit_path.stat().st_mtime,
                    message=f"its exit file {exit_path} is damaged ({text[:40]!r}); see its log",
                )
            return self._update(
                fire.id,
                state="succeeded" if code == 0 else "failed",
                exit_code=code,
                finished_at=exit_path.stat().st_mtime,
            )
        if fire.state == "starting" and self.clock() - fire.fired_at < 60:
            return None  # its scheduler may still be launching it
        if fire.pid is None or not process_alive(fire.pid, fire.pid_start):
            return self._update(
                fire.id,
                state="failed",
                finished_at=self.clock(),
                message="the run's process ended without recording an exit code (killed?)",
            )
        return None

    def _check_ray(self, fire: Fire) -> Fire | None:
        from cluster import ClusterError, RayJobNotFoundError, RayJobsClient

        schedule = self._schedule_or_none(fire.schedule)
        address = schedule.address if schedule else None
        if fire.submission_id is None or address is None:
            if fire.state == "starting" and self.clock() - fire.fired_at < 60:
                return None
            return self._update(fire.id, state="failed", finished_at=self.clock(), message="never submitted")
        try:
            info = RayJobsClient(address).info(fire.submission_id)
        except RayJobNotFoundError:
            if fire.state == "starting" and self.clock() - fire.fired_at < 60:
                return None
            return self._update(
                fire.id, state="failed", finished_at=self.clock(), message=f"the cluster at {address} has no such job"
            )
        except ClusterError as exc:
            logger.warning("schedule %s: cannot see fire #%d's Ray job: %s", fire.schedule, fire.id, exc)
            return None
        if not info.finished:
            if fire.state == "starting":
                self._update(fire.id, state="running", ray_status=info.status)
            return None
        return self._update(
            fire.id,
            state="succeeded" if info.status == "SUCCEEDED" else "failed",
            ray_status=info.status,
            exit_code=info.driver_exit_code,
            finished_at=info.end_time or self.clock(),
            message="" if info.status == "SUCCEEDED" else _first_line(info.message),
        )

    # ------------------------------------------------------------------ storage

    def _exit_path(self, fire_id: int) -> Path:
        return self.state_dir / "exits" / f"{fire_id}.exit"

    def _schedule_or_none(self, name: str) -> Schedule | None:
        try:
            return self.get(name)
        except ScheduleError:
            return None

    def _update(self, fire_id: int, **values: object) -> Fire:
        cols = ", ".join(f"{k} = ?" for k in values)
        with self._db() as db:
            db.execute(f"UPDATE fires SET {cols} WHERE id = ?", (*values.values(), fire_id))
        return self.fire(fire_id)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)  # autocommit; explicit BEGIN
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()


_SCHEMA = """
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


def _schedule(row: sqlite3.Row) -> Schedule:
    return Schedule(
        name=row["name"],
        job=row["job"],
        cron=row["cron"],
        timezone=row["timezone"],
        address=row["address"],
        created_at=row["created_at"],
        last_slot=row["last_slot"],
    )


def _fire(row: sqlite3.Row) -> Fire:
    return Fire(**{k: row[k] for k in row.keys()})


def _iso(ts: float, zone_name: str | None) -> str:
    return datetime.fromtimestamp(ts, _zone(zone_name)).isoformat(timespec="seconds")


def _first_line(text: str, limit: int = 300) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"
