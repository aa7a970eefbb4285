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

Inside: ``_records`` (the records, their states, the error), ``_cron`` (cron expressions, time zones,
due slots), ``_store`` (the SQLite file and its numbered migrations), ``_launchers`` (local and Ray
fires) and ``_scheduler`` (the ``Scheduler`` that puts them together).
"""

from __future__ import annotations

from ._cron import next_after, parse_cron
from ._launchers import SUMMARY_FILE_ENV, SUMMARY_LINE
from ._records import Fire, FireKind, FireState, Schedule, ScheduleError, ScheduleStatus
from ._scheduler import Scheduler, default_state_dir

__all__ = [
    "SUMMARY_FILE_ENV",
    "SUMMARY_LINE",
    "Fire",
    "FireKind",
    "FireState",
    "Schedule",
    "ScheduleError",
    "ScheduleStatus",
    "Scheduler",
    "default_state_dir",
    "next_after",
    "parse_cron",
]
