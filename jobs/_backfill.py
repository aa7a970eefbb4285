"""``embedjob run JOB --add-granularity l4_d64``: new vector columns for an existing table, one commit."""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from cluster import BackfillPlan, ray_session, run_backfill
from embedder import Granularity
from storage import (
    METADATA_KEY,
    TableLock,
    calibration_uri,
    commit_new_columns,
    dataset_schema,
    dataset_version,
)

from ._checks import check_job
from ._indexing import refresh_indexes
from ._run import RunSummary, after_commit, append_run_record, most_rows_first, new_run_id
from ._spec import JobSpec, load_job

__all__ = ["backfill_job"]

logger = logging.getLogger("embedjob")


def backfill_job(
    job: str | Path | JobSpec,
    add: list[str] | tuple[str, ...],
    *,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    wait_s: float = 0.0,
) -> RunSummary:
    """Embed the table's stored text for the granularities in ``add`` and add them as columns in one commit.

    The job must list the table's granularities plus ``add``; everything else
    (model, weights, pooling, max_length, calibration) must be the table's.
    Rows, ids and existing vectors are not touched.
    """
    t0 = time.perf_counter()
    started = datetime.now(UTC)
    source_name = str(job) if not isinstance(job, JobSpec) else (job.name or "job")
    spec = job if isinstance(job, JobSpec) else load_job(job, overrides)
    resolved = check_job(spec, source_name=source_name, backfill=tuple(add))
    opts, uri = resolved.storage_options, resolved.output_uri
    new = tuple(sorted(Granularity.parse(g) for g in add))
    run_id = new_run_id()
    lock = TableLock(uri, run_id=run_id, storage_options=opts)
    lock.acquire(wait_s=wait_s)
    try:
        read_version = dataset_version(uri, opts)
        assert read_version is not None
        cal = resolved.calibration
        plan = BackfillPlan(
            table_uri=uri,
            read_version=read_version,
            model_path=resolved.provenance.model_path,
            encoder=dataclasses.replace(resolved.encoder, granularities=new),
            vector_dtype=spec.output.vector_dtype,
            storage_options=opts,
            calibration_uri=calibration_uri(uri, cal.fingerprint) if cal else None,
            actors=spec.cluster.actors,
            gpus_per_actor=spec.cluster.gpus_per_actor,
            cpus_per_actor=spec.cluster.cpus_per_actor,
            progress=progress,
        )
        logger.info("backfill %s: %s into %s", run_id, ", ".join(map(str, new)), uri)
        with ray_session(spec.cluster.address):
            result = run_backfill(plan)
        current = dataset_schema(uri, opts)
        assert current is not None
        added = [resolved.schema.field(f"vec_{g}") for g in new]
        schema = pa.schema(
            [*current, *added],
            metadata={**(current.metadata or {}), METADATA_KEY: resolved.provenance.to_json().encode()},
        )
        lock.check()
        version = commit_new_columns(
            uri, result.fragments, schema=schema, read_version=read_version, storage_options=opts
        )
        # ---- committed: what follows is bookkeeping, and never makes the backfill a failed one
        warnings = []
        try:  # the Merge keeps the old columns' indexes; the [index] section's new columns get theirs now
            indexes = refresh_indexes(resolved, changed=False)
        except Exception as exc:
            indexes = []
            warnings.append(f"the indexes could not be refreshed ({exc}); run `embedjob index {uri} --all`")
    finally:
        lock.release()
    summary = RunSummary(
        run_id=run_id,
        job_name=spec.name or Path(source_name).stem,
        table_uri=uri,
        mode="backfill " + ",".join(map(str, new)),
        status="committed",
        table_version=version,
        rows_read=result.rows,
        rows_embedded=result.rows,
        rows_rejected=0,
        tokens=0,
        truncated=0,
        seconds=time.perf_counter() - t0,
        seconds_pipeline=result.seconds,
        started_at=started,
        finished_at=datetime.now(UTC),
        pool=result.pool,
        calibration=cal.fingerprint if cal else None,
        calibration_origin=resolved.calibration_origin,
        read_version=read_version,
        indexes=indexes,
        rows_per_node=most_rows_first(result.rows_per_node),
        warnings=warnings,
    )
    after_commit(
        summary,
        lambda: append_run_record(resolved, summary),
        f"backfill {run_id} committed version {version}, but its record could not be added to the runs table "
        f"({{error}})",
    )
    for warning in summary.warnings:
        logger.warning(warning)
    return summary
