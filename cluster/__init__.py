"""Ray: connect (embedded local Ray by default, ``address`` or ``RAY_ADDRESS``),
size the encoder actor pool from the cluster's resources, and run the
read -> encode -> write pipeline. Parses no job files.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: each public name by the private module that defines it: a name's module is imported on first use
#: (PEP 562), so that a process needing one part (a Ray worker running the id registry or a write task)
#: does not import the rest (torch, transformers) through this package
_EXPORTS: dict[str, tuple[str, ...]] = {
    "_backfill": ("BackfillPlan", "BackfillResult", "run_backfill"),
    "_calibrate": ("CalibrationPlan", "CalibrationSample", "run_calibration"),
    "_connect": ("probe_address", "ray_session"),
    "_errors": ("ClusterError", "SourceError"),
    "_handles": ("ray_running",),
    "_inprocess": ("describe_process", "process_pool", "run_in_process"),
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
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
