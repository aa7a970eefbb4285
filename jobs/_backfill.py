"""``embedjob run JOB --add-granularity l4_d64``: new vector columns for an existing table, one commit.

A backfill is a run like any other (``_lifecycle``): it holds the table's lock, stages each fragment's new
columns as a part, records a failure, and can be resumed (``embedjob resume RUN_ID``) without embedding
the fragments it staged again.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from cluster import BackfillPlan, BackfillResult, run_backfill
from embedder import Granularity
from storage import calibration_uri, commit_new_columns, dataset_schema, vector_column

from ._checks import ResolvedJob
from ._lifecycle import TableRun, checked_job, pool_request, refresh_indexes_after, run_on_table
from ._spec import JobSpec
from ._summary import RunSummary

__all__ = ["backfill_job"]

logger = logging.getLogger("embedjob")


def backfill_job(
    job: str | Path | JobSpec,
    add: list[str] | tuple[str, ...],
    *,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    wait_s: float = 0.0,
    resume: str | None = None,
    source_name: str | None = None,
) -> RunSummary:
    """Embed the table's stored text for the granularities in ``add`` and add them as columns in one commit.

    The job must list the table's granularities plus ``add``; everything else
    (model, weights, pooling, max_length, calibration) must be the table's.
    Rows, ids and existing vectors are not touched.
    """
    resolved, source_name = checked_job(job, overrides, source_name, resume=resume, backfill=tuple(add))
    new = tuple(sorted(Granularity.parse(g) for g in add))
    return run_on_table(
        resolved,
        lambda read_version: _Backfill(resolved, new),
        source_name=source_name,
        progress=progress,
        resume=resume,
        wait_s=wait_s,
    )


@dataclass
class _Backfill:
    """The work of a backfill: the new columns of every fragment on Ray, one Merge commit."""

    resolved: ResolvedJob
    new: tuple[Granularity, ...]

    @property
    def mode(self) -> str:
        return "backfill " + ",".join(map(str, self.new))

    def execute(self, run: TableRun) -> BackfillResult:
        resolved = self.resolved
        assert run.read_version is not None
        cal = resolved.calibration
        plan = BackfillPlan(
            run_id=run.run_id,
            table_uri=resolved.output_uri,
            read_version=run.read_version,
            model_path=resolved.provenance.model_path,
            encoder=dataclasses.replace(resolved.encoder, granularities=self.new),
            vector_dtype=resolved.spec.output.vector_dtype,
            storage_options=resolved.storage_options,
            calibration_uri=calibration_uri(resolved.output_uri, cal.fingerprint) if cal else None,
            pool=pool_request(resolved, run.progress),
            resume=run.resumed,
        )
        logger.info("backfill %s: %s into %s", run.run_id, ", ".join(map(str, self.new)), resolved.output_uri)
        return run_backfill(plan, display=run.display)

    def summarize(self, run: TableRun, result: BackfillResult) -> RunSummary:
        return run.summary(
            self.mode,
            self.resolved,
            rows_read=result.rows,
            rows_embedded=result.rows,
            rows_resumed=result.resumed,
            seconds_pipeline=result.seconds,
            pool=result.pool,
            rows_per_node=result.rows_per_node,
        )

    def commit(self, run: TableRun, result: BackfillResult, message: str) -> int:
        resolved = self.resolved
        uri, opts = resolved.output_uri, resolved.storage_options
        assert run.read_version is not None
        current = dataset_schema(uri, opts)
        assert current is not None
        added = [resolved.schema.field(vector_column(g)) for g in self.new]
        # the job's provenance and LanceDB's embedding functions, both naming the new columns too
        schema = pa.schema([*current, *added], metadata={**(current.metadata or {}), **resolved.schema.metadata})
        return commit_new_columns(
            uri, result.fragments, schema=schema, read_version=run.read_version, storage_options=opts, message=message
        )

    def after(self, run: TableRun, summary: RunSummary) -> None:
        # the Merge keeps the old columns' indexes; the [index] section's new columns get theirs now
        refresh_indexes_after(run, summary, changed=False)
