"""``embedjob calibrate``: fit a calibration on a sample of a job's own corpus, through Ray.

Actors embed the sampled rows to full depth and return summed statistics; the
driver adds them, solves once, and stores the calibration next to the job's
output (``<table>_calibration/<fingerprint>.safetensors``), where
``calibration = "auto"`` finds it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster import CalibrationPlan, ProgressDisplay, Stage, run_calibration
from embedder import Calibration
from storage import save_calibration

from ._checks import ResolvedJob
from ._lifecycle import checked_job, in_ray_session, pool_request
from ._spec import JobSpec

__all__ = ["CalibrationReport", "calibrate_job", "fit_for_job"]

logger = logging.getLogger("embedjob")


@dataclass(frozen=True)
class CalibrationReport:
    calibration: Calibration
    uri: str
    rows_total: int
    rows_sampled: int
    seconds: float
    pool: str


def fit_for_job(
    resolved: ResolvedJob, *, progress: bool = True, display: ProgressDisplay | None = None
) -> CalibrationReport:
    """Sample the job's corpus, fit, and store the calibration next to its output. Needs Ray up. ``display``:
    where its progress shows (a run's display, when the run fits its calibration first)."""
    spec, prov = resolved.spec, resolved.provenance
    opts = spec.calibrate
    layers = resolved.fit_layers()
    plan = CalibrationPlan(
        source=resolved.source,
        id_column=spec.input.id_column,
        text_column=spec.input.text_column,
        model_path=prov.model_path,
        encoder=resolved.encoder,
        layers=layers,
        sample=opts.sample,
        heldout_fraction=opts.heldout,
        seed=opts.seed,
        chunking=resolved.chunking,
        pool=pool_request(resolved, progress),
    )
    logger.info(
        "calibration: fitting maps for layers %s on a sample of up to ~%d rows of %s",
        layers,
        opts.sample,
        plan.source.uri,
    )
    sample = run_calibration(plan, display=display)
    if display is not None:
        display.stage(Stage.SOLVING)
    calibration = sample.stats.solve(
        model_fingerprint=prov.weights_fingerprint,
        model_path=prov.model_path,
        pooling=prov.pooling,
        max_length=prov.max_length,
        corpus=f"{resolved.source.uri} (id {spec.input.id_column!r}, text {spec.input.text_column!r})",
        seed=opts.seed,
    )
    uri = save_calibration(resolved.output_uri, calibration, storage_options=resolved.storage_options)
    logger.info("calibration %s: %d rows sampled, stored at %s", calibration.fingerprint, sample.rows_sampled, uri)
    return CalibrationReport(
        calibration=calibration,
        uri=uri,
        rows_total=sample.rows_total,
        rows_sampled=sample.rows_sampled,
        seconds=sample.seconds,
        pool=sample.pool.describe(),
    )


def calibrate_job(
    job: str | Path | JobSpec,
    *,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
) -> CalibrationReport:
    """Fit a calibration for ``job`` (its model, exit layers and corpus) and store it next to its output.

    ``overrides`` are dotted job keys, e.g. ``{"calibrate.sample": 5000, "calibrate.layers": "all"}``.
    """
    resolved, _ = checked_job(job, overrides, purpose="calibrate")
    name = resolved.spec.name or (None if isinstance(job, JobSpec) else Path(job).stem)
    with ProgressDisplay.for_command(f"calibration of {name}" if name else "calibration", show=progress) as display:
        return in_ray_session(resolved, lambda: fit_for_job(resolved, progress=progress, display=display))
