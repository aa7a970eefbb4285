"""What the scheduler keeps: schedules, their fires, and the closed sets a fire's state and kind come from."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ACTIVE_STATES", "Fire", "FireKind", "FireState", "Schedule", "ScheduleError", "ScheduleStatus"]


class ScheduleError(ValueError):
    """A bad schedule name, cron expression, time zone or job file, or an unknown schedule."""


class FireState(StrEnum):
    """Where a fire is. The values are what the store keeps and what ``embedjob schedule`` prints."""

    STARTING = "starting"  # claimed; not started yet (or its scheduler died while starting it)
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # the previous run of its schedule was still going

    @property
    def active(self) -> bool:
        """Not ended: its outcome is still to be looked for."""
        return self in ACTIVE_STATES


ACTIVE_STATES = (FireState.STARTING, FireState.RUNNING)


class FireKind(StrEnum):
    """How a fire runs: a detached local subprocess, or a job through a cluster's Ray Jobs API."""

    LOCAL = "local"
    RAY = "ray"


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

    @property
    def kind(self) -> FireKind:
        """How its fires run: through the Ray Jobs API at ``address`` where it has one, else locally."""
        return FireKind.RAY if self.address else FireKind.LOCAL


@dataclass(frozen=True)
class Fire:
    id: int
    schedule: str
    slot: float  # the cron time it fired for
    fired_at: float
    state: FireState
    kind: FireKind
    finished_at: float | None = None
    pid: int | None = None
    pid_start: int | None = None  # the pid's start time (clock ticks since boot): a reused pid is not ours
    submission_id: str | None = None
    exit_code: int | None = None
    ray_status: str | None = None
    log_path: str | None = None
    message: str = ""  # why it was skipped or failed
    note: str = ""  # e.g. that it caught up on missed slots
    counts: str = ""  # a local run's counts, one line: what it committed

    @property
    def active(self) -> bool:
        return self.state.active

    def outcome(self) -> str:
        """One line: state plus exit code or Ray status, e.g. ``failed (exit 2)``."""
        if self.state == FireState.SKIPPED:
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
        if self.state == FireState.FAILED and self.message:
            detail.append(self.message)
        return self.state.value + (f" ({', '.join(detail)})" if detail else "")


@dataclass(frozen=True)
class ScheduleStatus:
    schedule: Schedule
    next_fire: float
    last_fire: Fire | None  # the latest fire that ran (skipped ones aside)
    skipped: int  # fires skipped since then
