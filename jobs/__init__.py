"""Job specs, the run lifecycle, the scheduler and the ``embedjob`` CLI.

Nothing else imports this package (the flow is one-way: jobs -> cluster -> embedder/storage).
"""

from __future__ import annotations

from storage import VERSION as __version__

from ._backfill import backfill_job
from ._calibrate import CalibrationReport, calibrate_job
from ._checks import ResolvedJob, check_job
from ._guards import DeletionRefused, RejectLimitExceeded
from ._init import init_job
from ._lifecycle import finish_committed_runs
from ._migrate import AbortReport, MigrationStatus, abort_migration_of, migration_status
from ._plan import JobPlan, plan_job
from ._run import RunNotResumable, resume_run, run_job
from ._spec import JobSpec, JobSpecError, load_job, parse_job
from ._summary import RunSummary
from .quality import QualityMap, QualityRow, evaluate, evaluate_job, evaluate_table

__all__ = [
    "AbortReport",
    "CalibrationReport",
    "DeletionRefused",
    "JobPlan",
    "JobSpec",
    "JobSpecError",
    "MigrationStatus",
    "QualityMap",
    "QualityRow",
    "RejectLimitExceeded",
    "ResolvedJob",
    "RunNotResumable",
    "RunSummary",
    "__version__",
    "abort_migration_of",
    "backfill_job",
    "calibrate_job",
    "check_job",
    "evaluate",
    "evaluate_job",
    "evaluate_table",
    "finish_committed_runs",
    "init_job",
    "load_job",
    "migration_status",
    "parse_job",
    "plan_job",
    "resume_run",
    "run_job",
]
