"""The scheduler: schedules added and removed, due slots claimed and fired, outcomes looked for, and the
long-running loop. What is kept is the store's; when a slot is due, the cron maths'; how a fire runs, its
launcher's."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..state import private_dir, state_dir
from ._cron import iso, latest_due, next_after, parse_cron, zone
from ._launchers import Launcher, LocalLauncher, RayLauncher, run_job_command
from ._records import Fire, FireKind, FireState, Schedule, ScheduleError, ScheduleStatus
from ._store import Store

__all__ = ["Scheduler", "default_state_dir"]

logger = logging.getLogger("jobs.schedule")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # whole name (fullmatch: no trailing newline)


def default_state_dir() -> Path:
    """``EMBEDJOB_STATE_DIR``, else ``~/.embedjob`` (shared with the runs index of ``embedjob resume``)."""
    return state_dir()


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
        local_command: Callable[[str], Sequence[str]] = run_job_command,
        python: str = "python",
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.clock = clock
        self.local_command = local_command
        self.python = python  # the interpreter on a cluster's head node, for fires through the Jobs API
        self.db_path = self.state_dir / "schedule.db"
        try:  # what it keeps (job paths, logs of runs) is for its owner only: folders 0700, files 0600
            for sub in ("logs", "exits"):
                private_dir(self.state_dir / sub)
            os.close(os.open(self.db_path, os.O_RDWR | os.O_CREAT, 0o600))  # (SQLite's -wal, -shm: the same)
        except OSError as exc:
            raise ScheduleError(f"cannot use {str(self.state_dir)!r} as the state dir: {exc}") from None
        self._store = Store(self.db_path)
        # the launchers read the clock, the command and the interpreter at each call: they may be replaced

        def now() -> float:
            return self.clock()

        self._launchers: dict[FireKind, Launcher] = {
            FireKind.LOCAL: LocalLauncher(
                self._store,
                now,
                command=lambda job: self.local_command(job),
                logs=self.state_dir / "logs",
                exits=self.state_dir / "exits",
            ),
            FireKind.RAY: RayLauncher(self._store, now, python=lambda: self.python),
        }

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
        from .._spec import JobSpecError, load_job

        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ScheduleError(
                f"schedule name {name!r} is not allowed: 1-64 letters, digits, '.', '_' or '-', starting with a "
                f"letter or digit"
            )
        cron = parse_cron(cron)
        zone(timezone)
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
        self._store.add(Schedule(name, str(path), cron, timezone, address, self.clock(), None))
        return self.get(name)

    def remove(self, name: str) -> Schedule:
        """Forget a schedule and its fire history (a run in progress is left to finish)."""
        schedule = self.get(name)
        self._store.remove(name)
        return schedule

    def get(self, name: str) -> Schedule:
        schedule = self._store.schedule(name)
        if schedule is None:
            known = [s.name for s in self._store.schedules()]
            raise ScheduleError(f"no schedule named {name!r}; known: {', '.join(known) or 'none'}")
        return schedule

    def schedules(self) -> list[Schedule]:
        return self._store.schedules()

    def next_fire(self, schedule: Schedule) -> float:
        """When it fires next: now if a slot is due (missed ones included), else its next slot."""
        base = schedule.last_slot if schedule.last_slot is not None else schedule.created_at
        return next_after(schedule.cron, base, zone(schedule.timezone))

    def status(self) -> list[ScheduleStatus]:
        """Every schedule with its next fire and its last run (outcomes refreshed first)."""
        self.refresh()
        out = []
        for schedule in self.schedules():
            fires = self._store.fires(schedule.name, limit=200)
            last = next((f for f in fires if f.state != FireState.SKIPPED), None)
            skipped = sum(1 for f in fires if f.state == FireState.SKIPPED and (last is None or f.id > last.id))
            out.append(ScheduleStatus(schedule, self.next_fire(schedule), last, skipped))
        return out

    def fires(self, name: str | None = None, *, limit: int = 50) -> list[Fire]:
        """Recorded fires, newest first."""
        return self._store.fires(name, limit=limit)

    def fire(self, fire_id: int) -> Fire:
        return self._store.fire(fire_id)

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

    def fire_now(self, name: str) -> Fire:
        """Fire schedule ``name`` now, whatever its cron says (``embedjob schedule fire``). The fire counts as the
        schedule's latest slot; while its previous fire still runs it is recorded skipped, as a due slot would be."""
        self.refresh()
        schedule = self.get(name)
        now = self.clock()
        fire = self._claim(schedule, now, now, note="fired on demand")
        if fire is None:
            raise ScheduleError(f"schedule {name!r} was fired by another scheduler at this moment; try again")
        if fire.state == FireState.STARTING:
            fire = self._launchers[schedule.kind].launch(schedule, fire)
        return fire

    def _fire_if_due(self, schedule: Schedule, now: float) -> Fire | None:
        base = schedule.last_slot if schedule.last_slot is not None else schedule.created_at
        slot = latest_due(schedule.cron, base, now, zone(schedule.timezone))
        if slot is None:
            return None
        fire = self._claim(schedule, slot, now)
        if fire is None:
            return None  # another scheduler took this slot
        if fire.state == FireState.STARTING:
            fire = self._launchers[schedule.kind].launch(schedule, fire)
        return fire

    def refresh(self) -> list[Fire]:
        """Look at every fire still marked running and record the outcome of those that ended."""
        done = []
        for fire in self._store.active_fires():
            try:
                ended = self._launchers[fire.kind].check(fire)
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

    def _claim(self, schedule: Schedule, slot: float, now: float, *, note: str = "") -> Fire | None:
        """Record the fire (or its skip) and move the schedule past ``slot``, in one transaction."""

        def decide(busy: Fire | None) -> tuple[FireState, str]:
            if busy is None:
                return FireState.STARTING, ""
            where = f"pid {busy.pid}" if busy.pid else (busy.submission_id or "starting")
            return FireState.SKIPPED, f"fire #{busy.id} ({where}) is still running"

        missed_from = self.next_fire(schedule)
        if not note and missed_from < slot:
            note = f"caught up: slots since {iso(missed_from, schedule.timezone)} were missed; fired once"
        fire_id = self._store.claim(schedule, slot, now, note=note, decide=decide)
        if fire_id is None:
            return None
        fire = self.fire(fire_id)
        if fire.state == FireState.SKIPPED:
            logger.warning(
                "schedule %s: slot %s skipped: %s", schedule.name, iso(slot, schedule.timezone), fire.message
            )
        return fire
