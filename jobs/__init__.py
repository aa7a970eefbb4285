"""Job specs, the run lifecycle, the scheduler and the ``embedjob`` CLI.

Nothing else imports this package (the flow is one-way: jobs -> cluster -> embedder/storage).
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._calibrate import CalibrationReport, calibrate_job
from ._checks import ResolvedJob, check_job
from ._guards import DeletionRefused, RejectLimitExceeded
from ._run import RunSummary, resume_run, run_job
from ._spec import JobSpec, JobSpecError, load_job, parse_job
from .quality import QualityMap, QualityRow, evaluate, evaluate_job, evaluate_table

__all__ = [
    "CalibrationReport",
    "DeletionRefused",
    "JobSpec",
    "JobSpecError",
    "QualityMap",
    "QualityRow",
    "RejectLimitExceeded",
    "ResolvedJob",
    "RunSummary",
    "__version__",
    "calibrate_job",
    "check_job",
    "evaluate",
    "evaluate_job",
    "evaluate_table",
    "load_job",
    "parse_job",
    "resume_run",
    "run_job",
]
