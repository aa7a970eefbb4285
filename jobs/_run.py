"""The run lifecycle: check, plan, run the pipeline on Ray, commit once, record the run."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from cluster import EmbedPlan, ray_session, run_pipeline
from storage import REJECTS_SCHEMA, append_rows, calibration_uri, commit, dataset_version, save_calibration

from . import __version__
from ._calibrate import fit_for_job
from ._checks import ResolvedJob, check_job
from ._spec import JobSpec, load_job

__all__ = ["RejectLimitExceeded", "RunSummary", "new_run_id", "run_job"]

logger = logging.getLogger("embedjob")


class RejectLimitExceeded(RuntimeError):
    """More rows were rejected than ``output.max_reject_fraction`` allows; nothing was committed."""

    def __init__(self, rejected: int, read: int, limit: float, reasons: dict[str, int]) -> None:
        self.rejected, self.read, self.limit, self.reasons = rejected, read, limit, dict(reasons)
        top = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        super().__init__(
            f"{rejected} of {read} rows rejected ({rejected / max(read, 1):.2%}), above "
            f"output.max_reject_fraction = {limit:g}; nothing was committed. Reasons: {top}"
        )

    def __reduce__(self):
        return (type(self), (self.rejected, self.read, self.limit, self.reasons))


@dataclass
class RunSummary:
    run_id: str
    job_name: str
    table_uri: str
    mode: str
    status: str
    table_version: int | None
    rows_read: int
    rows_embedded: int
    rows_rejected: int
    tokens: int
    truncated: int
    seconds: float
    seconds_pipeline: float
    started_at: datetime
    finished_at: datetime
    pool: str
    reject_reasons: dict[str, int] = field(default_factory=dict)
    calibration: str | None = None  # the calibration's fingerprint (also in the table's provenance)
    calibration_origin: str = "none"
    seconds_calibration: float = 0.0  # fitting one first (calibration = "auto" with none to reuse)

    @property
    def rows_per_s(self) -> float:
        return self.rows_embedded / self.seconds_pipeline if self.seconds_pipeline else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds_pipeline if self.seconds_pipeline else 0.0

    def record(self) -> pa.Table:
        row: dict[str, Any] = {k: v for k, v in asdict(self).items() if k in RUNS_SCHEMA.names}
        row["reject_reasons"] = json.dumps(self.reject_reasons)
        row["embedjob_version"] = __version__
        return pa.Table.from_pylist([row], schema=RUNS_SCHEMA)


RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("job_name", pa.string()),
        ("table_uri", pa.string()),
        ("mode", pa.string()),
        ("status", pa.string()),
        ("table_version", pa.int64()),
        ("rows_read", pa.int64()),
        ("rows_embedded", pa.int64()),
        ("rows_rejected", pa.int64()),
        ("tokens", pa.int64()),
        ("truncated", pa.int64()),
        ("seconds", pa.float64()),
        ("seconds_pipeline", pa.float64()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("pool", pa.string()),
        ("reject_reasons", pa.string()),
        ("embedjob_version", pa.string()),
    ]
)


def new_run_id() -> str:
    """Sortable and unique: ``20261122T161500Z-1a2b3c4d``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def run_job(
    job: str | Path | JobSpec,
    *,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
) -> RunSummary:
    """Run one embedding job end to end and return its summary.

    Everything checkable is checked before Ray starts. The output table gets
    exactly one new version, committed after every row was staged; a run that
    fails or is killed before that leaves it at its previous version.
    """
    t0 = time.perf_counter()
    started = datetime.now(UTC)
    source_name = str(job) if not isinstance(job, JobSpec) else (job.name or "job")
    spec = job if isinstance(job, JobSpec) else load_job(job, overrides)
    resolved = check_job(spec, source_name=source_name)
    run_id = new_run_id()
    opts = resolved.storage_options
    read_version = dataset_version(resolved.output_uri, opts) if resolved.output_exists else None
    logger.info("run %s: %s -> %s", run_id, resolved.source.uri, resolved.output_uri)
    seconds_calibration = 0.0
    with ray_session(spec.cluster.address):
        if resolved.calibration_pending:
            report = fit_for_job(resolved, progress=progress)
            resolved = resolved.with_calibration(report.calibration, f"fitted now on {report.rows_sampled:,} rows")
            seconds_calibration = report.seconds
        elif resolved.calibration is not None:
            # kept next to the table (content-addressed): the actors load it from there, and so do
            # the table's queries later
            save_calibration(resolved.output_uri, resolved.calibration, storage_options=opts)
        result = run_pipeline(_plan(resolved, run_id, progress))
    limit = spec.output.max_reject_fraction
    if result.rows_read and result.rows_rejected / result.rows_read > limit:
        raise RejectLimitExceeded(result.rows_rejected, result.rows_read, limit, result.reject_reasons)
    mode = spec.output.mode
    if mode == "append" and read_version is None:
        mode = "create"
    version = commit(
        resolved.output_uri,
        result.fragments,
        schema=resolved.schema,
        mode=mode,
        read_version=read_version,
        storage_options=opts,
        message=f"embedjob run {run_id}",
    )
    if result.reject_fragments:
        commit(
            resolved.rejects_uri,
            result.reject_fragments,
            schema=REJECTS_SCHEMA,
            mode="append",
            read_version=dataset_version(resolved.rejects_uri, opts),
            storage_options=opts,
            message=f"embedjob run {run_id}",
        )
    summary = RunSummary(
        run_id=run_id,
        job_name=spec.name or Path(source_name).stem,
        table_uri=resolved.output_uri,
        mode=spec.output.mode,
        status="committed",
        table_version=version,
        rows_read=result.rows_read,
        rows_embedded=result.rows_embedded,
        rows_rejected=result.rows_rejected,
        tokens=result.tokens,
        truncated=result.truncated,
        seconds=time.perf_counter() - t0,
        seconds_pipeline=result.seconds,
        started_at=started,
        finished_at=datetime.now(UTC),
        pool=result.pool.describe(),
        reject_reasons=result.reject_reasons,
        calibration=resolved.calibration.fingerprint if resolved.calibration else None,
        calibration_origin=resolved.calibration_origin,
        seconds_calibration=seconds_calibration,
    )
    append_rows(resolved.runs_uri, summary.record(), storage_options=opts)
    return summary


def _plan(resolved: ResolvedJob, run_id: str, progress: bool) -> EmbedPlan:
    spec = resolved.spec
    return EmbedPlan(
        run_id=run_id,
        source=resolved.source,
        id_column=spec.input.id_column,
        text_column=spec.input.text_column,
        passthrough=tuple(spec.input.columns),
        model_path=resolved.provenance.model_path,
        encoder=resolved.encoder,
        schema=resolved.schema,
        output_uri=resolved.output_uri,
        rejects_uri=resolved.rejects_uri,
        vector_dtype=spec.output.vector_dtype,
        storage_options=resolved.storage_options,
        actors=spec.cluster.actors,
        gpus_per_actor=spec.cluster.gpus_per_actor,
        cpus_per_actor=spec.cluster.cpus_per_actor,
        rows_per_block=spec.cluster.rows_per_block,
        progress=progress,
        calibration_uri=(
            calibration_uri(resolved.output_uri, resolved.calibration.fingerprint) if resolved.calibration else None
        ),
    )
