"""How a fire runs, one launcher per kind: a detached local subprocess, or a job through a cluster's Ray
Jobs API. Each starts a claimed fire and finds out how it ended, recording both in the store."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from storage import process_alive, process_start_ticks

from ..submission import SUMMARY_FILE_ENV, SUMMARY_LINE
from ._cron import slot_stamp
from ._records import Fire, FireKind, FireState, Schedule
from ._store import Store

__all__ = ["SUMMARY_FILE_ENV", "SUMMARY_LINE", "Launcher", "LocalLauncher", "RayLauncher", "run_job_command"]

logger = logging.getLogger("jobs.schedule")

# A fire still ``starting`` this long after it was claimed may still be being launched by its scheduler.
_LAUNCH_GRACE_S = 60

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


def run_job_command(job: str) -> list[str]:
    """What a local fire runs by default: ``python -m jobs.cli run JOB`` with this interpreter."""
    return [sys.executable, "-m", "jobs.cli", "run", job, "--no-progress"]


class Launcher(ABC):
    """Starts the fires of one kind and looks for their outcomes; ``clock`` gives Unix seconds."""

    kind: ClassVar[FireKind]

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    @abstractmethod
    def launch(self, schedule: Schedule, fire: Fire) -> Fire:
        """Start a claimed (``starting``) fire; returns its record, ``running`` or ``failed``."""

    @abstractmethod
    def check(self, fire: Fire) -> Fire | None:
        """The fire's outcome if it has ended since we last looked (recorded), else None."""

    def _failed(self, fire: Fire, message: str) -> Fire:
        return self.store.update(fire.id, state=FireState.FAILED, finished_at=self.clock(), message=message)

    def _launching(self, fire: Fire) -> bool:
        """Whether its scheduler may still be launching it (so no outcome is to be expected yet)."""
        return fire.state == FireState.STARTING and self.clock() - fire.fired_at < _LAUNCH_GRACE_S


class LocalLauncher(Launcher):
    """A detached subprocess on this machine (``command(job)`` -> argv), its output in ``logs/``, its exit code
    written to ``exits/`` by a small wrapper, so any later scheduler can read it."""

    kind = FireKind.LOCAL

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        *,
        command: Callable[[str], Sequence[str]],
        logs: Path,
        exits: Path,
    ) -> None:
        super().__init__(store, clock)
        self.command = command
        self.logs = logs
        self.exits = exits
        self._children: dict[int, subprocess.Popen] = {}

    def exit_path(self, fire_id: int) -> Path:
        return self.exits / f"{fire_id}.exit"

    def summary_path(self, fire_id: int) -> Path:
        """Where the run writes its summary (``embedjob run`` reads ``EMBEDJOB_SUMMARY_FILE``)."""
        return self.exits / f"{fire_id}.summary.json"

    def launch(self, schedule: Schedule, fire: Fire) -> Fire:
        log_path = self.logs / f"{schedule.name}-{slot_stamp(fire.slot, schedule.timezone)}-{fire.id}.log"
        exit_path = self.exit_path(fire.id)
        argv = [sys.executable, "-c", _WRAPPER, str(exit_path), *self.command(schedule.job)]
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            SUMMARY_FILE_ENV: str(self.summary_path(fire.id)),
        }
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
            return self._failed(fire, f"could not start: {exc}")
        self._children[fire.id] = proc
        logger.info("schedule %s: fired #%d locally (pid %d), log %s", schedule.name, fire.id, proc.pid, log_path)
        return self.store.update(
            fire.id,
            state=FireState.RUNNING,
            pid=proc.pid,
            pid_start=process_start_ticks(proc.pid),
            log_path=str(log_path),
        )

    def check(self, fire: Fire) -> Fire | None:
        proc = self._children.get(fire.id)
        if proc is not None and proc.poll() is not None:
            del self._children[fire.id]  # reaped: no zombie left to look alive
        exit_path = self.exit_path(fire.id)
        if exit_path.exists():
            text = exit_path.read_text(errors="replace").strip()
            try:
                code = int(text)
            except ValueError:  # a damaged exit file: this fire's outcome is unknown, and only this fire's
                return self.store.update(
                    fire.id,
                    state=FireState.FAILED,
                    finished_at=exit_path.stat().st_mtime,
                    message=f"its exit file {exit_path} is damaged ({text[:40]!r}); see its log",
                )
            return self.store.update(
                fire.id,
                state=FireState.SUCCEEDED if code == 0 else FireState.FAILED,
                exit_code=code,
                finished_at=exit_path.stat().st_mtime,
                counts=_counts(self.summary_path(fire.id)),
            )
        if self._launching(fire):
            return None
        if fire.pid is None or not process_alive(fire.pid, fire.pid_start):
            return self._failed(fire, "the run's process ended without recording an exit code (killed?)")
        return None


class RayLauncher(Launcher):
    """A job submitted to the schedule's cluster through the Ray Jobs API (``python``: the interpreter on its
    head node), under a submission id recorded before it is submitted."""

    kind = FireKind.RAY

    def __init__(self, store: Store, clock: Callable[[], float], *, python: Callable[[], str]) -> None:
        super().__init__(store, clock)
        self.python = python

    def launch(self, schedule: Schedule, fire: Fire) -> Fire:
        from ..submission import submit_job

        sid = f"embedjob-{schedule.name}-{slot_stamp(fire.slot, schedule.timezone)}-{secrets.token_hex(3)}"
        # recorded before submitting: a scheduler that dies in between finds the job by this id
        self.store.update(fire.id, submission_id=sid)
        try:
            submit_job(
                schedule.job,
                address=schedule.address,
                python=self.python(),
                submission_id=sid,
                metadata={"embedjob_schedule": schedule.name, "embedjob_fire": str(fire.id)},
            )
        except Exception as exc:  # an unreachable cluster, a job file gone bad: this fire failed, the others go on
            return self._failed(fire, f"not submitted: {exc}")
        logger.info("schedule %s: fired #%d on %s as %s", schedule.name, fire.id, schedule.address, sid)
        return self.store.update(fire.id, state=FireState.RUNNING)

    def check(self, fire: Fire) -> Fire | None:
        from cluster import ClusterError, RayJobNotFoundError, RayJobsClient

        schedule = self.store.schedule(fire.schedule)
        address = schedule.address if schedule else None
        if fire.submission_id is None or address is None:
            if self._launching(fire):
                return None
            return self._failed(fire, "never submitted")
        try:
            info = RayJobsClient(address).info(fire.submission_id)
        except RayJobNotFoundError:
            if self._launching(fire):
                return None
            return self._failed(fire, f"the cluster at {address} has no such job")
        except ClusterError as exc:
            logger.warning("schedule %s: cannot see fire #%d's Ray job: %s", fire.schedule, fire.id, exc)
            return None
        if not info.finished:
            if fire.state == FireState.STARTING:
                self.store.update(fire.id, state=FireState.RUNNING, ray_status=info.status)
            return None
        try:
            counts = _counts_in_log(RayJobsClient(address).logs(fire.submission_id))
        except ClusterError:
            counts = ""  # the outcome is known; the counts stay in the job's log
        return self.store.update(
            fire.id,
            state=FireState.SUCCEEDED if info.status == "SUCCEEDED" else FireState.FAILED,
            ray_status=info.status,
            exit_code=info.driver_exit_code,
            finished_at=info.end_time or self.clock(),
            message="" if info.status == "SUCCEEDED" else _first_line(info.message),
            counts=counts,
        )


def _first_line(text: str, limit: int = 300) -> str:
    """The first non-blank line of a Ray job's message, as Ray wrote it, at most ``limit`` characters.

    Not ``storage.error_line``: that one quotes an exception (its type name first, white space folded), while
    this quotes the message text of a finished job, recorded as the fire's message.
    """
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _counts(path: Path) -> str:
    """A fired run's summary as one line (empty where it wrote none: it failed before its commit)."""
    try:
        return _describe(json.loads(path.read_text()))
    except (OSError, ValueError):
        return ""


def _counts_in_log(log: str) -> str:
    """The summary line a run on a cluster printed last in its log, as one line ("" where there is none)."""
    for line in reversed(log.splitlines()):
        if line.startswith(SUMMARY_LINE):
            try:
                return _describe(json.loads(line[len(SUMMARY_LINE) :]))
            except ValueError:
                return ""
    return ""


def _describe(s: object) -> str:
    if not isinstance(s, dict):
        return ""
    counts = (
        f"{s.get('rows_new', 0):,} new, {s.get('rows_changed', 0):,} changed, {s.get('rows_unchanged', 0):,} "
        f"unchanged, {s.get('rows_deleted', 0):,} deleted, {s.get('rows_rejected', 0):,} rejected"
    )
    return f"{s.get('status', '?')} version {s.get('table_version')}: {counts}"
