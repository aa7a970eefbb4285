"""Ray: connect (embedded local Ray by default, ``address`` or ``RAY_ADDRESS``),
size the encoder actor pool from the cluster's resources, and run the
read -> encode -> write pipeline. Parses no job files.
"""

from __future__ import annotations

from embedder._lazy import lazy_exports  # the packages' one export rule

#: each public name by the private module that defines it, imported on first use (``embedder._lazy``)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "_backfill": ("BackfillPlan", "BackfillResult", "run_backfill"),
    "_calibrate": ("CalibrationPlan", "CalibrationSample", "run_calibration"),
    "_connect": ("probe_address", "ray_session"),
    "_errors": ("ClusterError", "SourceError"),
    "_handles": ("ray_running",),
    "_inprocess": ("describe_process", "one_encoder_here", "process_pool", "run_in_process"),
    "_pipeline": ("EmbedPlan", "PipelineResult", "actor_placement", "run_pipeline", "start_pool"),
    "_plans": ("CorpusPlan", "EncoderPlan", "NextEncoder"),
    "_pool": ("NodeShare", "PoolPlan", "PoolRequest", "plan_pool"),
    "_progress": (
        "METRIC_ROWS_EMBEDDED",
        "METRIC_ROWS_REJECTED",
        "METRIC_TOKENS",
        "ProgressCounts",
        "ProgressDisplay",
        "Stage",
        "verbose_output",
    ),
    "_registry": ("IdRegistry",),
    "_sources": ("Source", "resolve_source"),
    "_stages": ("check_rows", "load_encoder"),
    "_submit": (
        "TERMINAL_STATUSES",
        "RayJobInfo",
        "RayJobNotFoundError",
        "RayJobsClient",
        "build_runtime_env",
        "jobs_api_address",
    ),
    "_timing": ("TIMING_LOGGER", "log_timing", "timed"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
