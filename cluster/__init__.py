"""Ray: connect (embedded local Ray by default, ``address`` or ``RAY_ADDRESS``),
size the encoder actor pool from the cluster's resources, and run the
read -> encode -> write pipeline. Parses no job files.
"""

from __future__ import annotations

from ._backfill import BackfillPlan, BackfillResult, run_backfill
from ._calibrate import CalibrationPlan, CalibrationSample, run_calibration
from ._connect import probe_address, ray_session
from ._errors import ClusterError, SourceError
from ._handles import in_ray as ray_running
from ._inprocess import describe_process, process_pool, run_in_process
from ._pipeline import EmbedPlan, PipelineResult, actor_placement, run_pipeline, start_pool
from ._plans import CorpusPlan, EncoderPlan, NextEncoder
from ._pool import NodeShare, PoolPlan, PoolRequest, plan_pool
from ._progress import (
    METRIC_ROWS_EMBEDDED,
    METRIC_ROWS_REJECTED,
    METRIC_TOKENS,
    ProgressCounts,
    ProgressDisplay,
    Stage,
    verbose_output,
)
from ._registry import IdRegistry
from ._sources import Source, resolve_source
from ._stages import check_rows, load_encoder
from ._submit import (
    TERMINAL_STATUSES,
    RayJobInfo,
    RayJobNotFoundError,
    RayJobsClient,
    build_runtime_env,
    jobs_api_address,
)
from ._timing import TIMING_LOGGER, log_timing, timed

__all__ = [
    "METRIC_ROWS_EMBEDDED",
    "METRIC_ROWS_REJECTED",
    "METRIC_TOKENS",
    "TERMINAL_STATUSES",
    "TIMING_LOGGER",
    "BackfillPlan",
    "BackfillResult",
    "CalibrationPlan",
    "CalibrationSample",
    "ClusterError",
    "CorpusPlan",
    "EmbedPlan",
    "EncoderPlan",
    "IdRegistry",
    "NextEncoder",
    "NodeShare",
    "PipelineResult",
    "PoolPlan",
    "PoolRequest",
    "ProgressCounts",
    "ProgressDisplay",
    "RayJobInfo",
    "RayJobNotFoundError",
    "RayJobsClient",
    "Source",
    "SourceError",
    "Stage",
    "actor_placement",
    "build_runtime_env",
    "check_rows",
    "describe_process",
    "jobs_api_address",
    "load_encoder",
    "log_timing",
    "plan_pool",
    "probe_address",
    "process_pool",
    "ray_running",
    "ray_session",
    "resolve_source",
    "run_backfill",
    "run_calibration",
    "run_in_process",
    "run_pipeline",
    "start_pool",
    "timed",
    "verbose_output",
]
