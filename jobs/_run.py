"""An embedding run: the job's corpus through the elastic encoder into its table, as one commit.

The lifecycle (lock, staging, commit, bookkeeping, failure records) is ``_lifecycle``'s; this module says
what an embedding run executes on Ray, which guards it passes, and how it commits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster import EmbedPlan, PipelineResult, describe_process, run_in_process, run_pipeline
from storage import (
    ObjectStore,
    RunIdError,
    RunStaging,
    StagedPart,
    calibration_uri,
    commit,
    commit_changes,
    count_rows,
    is_run_id,
    save_calibration,
)
from storage.vocab import keeps_existing_rows, updates_rows

from ._backfill import backfill_job
from ._calibrate import fit_for_job
from ._checks import ResolvedJob
from ._guards import check_deletions, check_rejects
from ._lifecycle import RunNotResumable, TableRun, checked_job, pool_request, refresh_indexes_after, run_on_table
from ._migrate import begin_step, finish_step, migration_plan_fields
from ._spec import JobSpec, parse_job
from ._summary import RunSummary
from .state import lookup_run, state_dir

__all__ = ["RunNotResumable", "RunSummary", "resume_run", "run_job"]

logger = logging.getLogger("embedjob")


def run_job(
    job: str | Path | JobSpec,
    *,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    resume: str | None = None,
    wait_s: float = 0.0,
    source_name: str | None = None,
    allow_deletes: bool = False,
) -> RunSummary:
    """Run one embedding job end to end and return its summary.

    Everything checkable is checked before Ray starts. The run holds the
    table's lock (waiting up to ``wait_s`` for another run), stages every batch
    in its staging folder, and makes exactly one commit: the table gets one new
    version, or none when an incremental run finds nothing changed (such a
    night is found before Ray starts, by comparing the input's ids and content
    hashes with the table's in this process: no Ray, no model). A run that
    fails or is killed leaves the table at its previous version; running the
    job again (or ``resume=RUN_ID``) finishes it without embedding the rows it
    already staged. A run that would delete more of the table than
    ``[output] max_delete_fraction`` allows is refused before its commit
    (:class:`DeletionRefused`) unless ``allow_deletes``.

    Once the commit succeeded the run is ``committed``, whatever happens
    after: bookkeeping that still fails after retries (the rejects table, the
    runs table) becomes a warning in ``RunSummary.warnings`` and is finished by
    the job's next run. A job with a ``[gate]`` whose probes score below its
    floor on the committed version is committed too (nothing raises after a
    commit): ``RunSummary.gate["passed"]`` is false, ``RunSummary.error``
    gives the figure, and the table's ``latest-good`` tag is not moved
    (``embedjob run`` exits 1).
    """
    resolved, source_name = checked_job(job, overrides, source_name, resume=resume)
    return run_on_table(
        resolved,
        lambda read_version: _Embed(resolved, read_version),
        source_name=source_name,
        progress=progress,
        resume=resume,
        wait_s=wait_s,
        allow_deletes=allow_deletes,
    )


def resume_run(
    run_id: str,
    *,
    table_uri: str | None = None,
    progress: bool = True,
    address: str | None = None,
    wait_s: float = 0.0,
    allow_deletes: bool = False,
) -> RunSummary:
    """Finish run ``run_id`` (an embedding run or a backfill) with the job config it started with (kept in its
    staging record)."""
    if not is_run_id(run_id):
        raise RunIdError(run_id)
    known = lookup_run(run_id) or {}
    uri = table_uri or known.get("table_uri")
    if not uri:
        raise RunNotResumable(
            f"run {run_id} was not started on this machine (nothing under {state_dir() / 'runs'}); "
            f"name its output table: embedjob resume {run_id} --table URI"
        )
    storage = known.get("storage") or {}
    store = ObjectStore.from_env(**storage) if uri.startswith("s3://") else None
    record = RunStaging(uri, run_id, store.lance_options() if store else None).read_record()
    if record is None or record.spec is None:
        raise RunNotResumable(
            f"run {run_id} has no staging record next to {uri!r}: it committed already, was cleaned up "
            f"by embedjob gc, or belongs to another table"
        )
    spec = parse_job(record.spec, source=str(record.job or run_id))
    if address:
        spec = spec.model_copy(update={"cluster": spec.cluster.model_copy(update={"address": address})})
    if (record.mode or "").startswith("backfill "):
        added = record.mode.split(" ", 1)[1].split(",")
        return backfill_job(spec, added, progress=progress, resume=run_id, wait_s=wait_s, source_name=record.job)
    return run_job(
        spec, progress=progress, resume=run_id, wait_s=wait_s, source_name=record.job, allow_deletes=allow_deletes
    )


@dataclass
class _Embed:
    """The work of an embedding run: the pipeline on Ray, the reject and deletion guards, one commit."""

    resolved: ResolvedJob
    read_version: int | None
    seconds_calibration: float = 0.0

    @property
    def mode(self) -> str:
        return self.resolved.mode

    def execute(self, run: TableRun) -> PipelineResult:
        resolved, uri = self.resolved, self.resolved.output_uri
        if resolved.calibration_pending:
            report = fit_for_job(resolved, progress=run.progress, display=run.display)
            resolved = resolved.with_calibration(report.calibration, f"fitted now on {report.rows_sampled:,} rows")
            self.resolved, self.seconds_calibration = resolved, report.seconds
        elif resolved.calibration is not None:
            # kept next to the table (content-addressed): the actors load it from there, and so do
            # the table's queries later
            save_calibration(uri, resolved.calibration, storage_options=resolved.storage_options)
        if resolved.migration is not None:
            begin_step(run, resolved)  # the first step adds the new columns (before anything is staged)
        plan = _plan(
            resolved, run.run_id, run.progress, mode=self.mode, read_version=run.read_version, resume=run.resumed
        )
        # a small night: the pipeline's stages in this process, without Ray (the lifecycle started none)
        execute = run_in_process if run.in_process is not None else run_pipeline
        return execute(plan, delete_missing=resolved.spec.output.delete_missing, display=run.display)

    def summarize(self, run: TableRun, result: PipelineResult) -> RunSummary:
        resolved, spec = self.resolved, self.resolved.spec
        counts = result.counts
        fields = {
            "rows_read": result.rows_read,
            "rows_rejected": result.rows_rejected,
            "reject_reasons": result.reject_reasons,
            "rows_new": counts.get("new", 0),
            "rows_changed": counts.get("changed", 0),
            "rows_unchanged": counts.get("unchanged", 0),
            "rows_deleted": counts.get("deleted", len(result.missing_ids)),  # a chunked table's: documents
            "pool": _pool_line(run, result),
            "seconds_pipeline": result.seconds,
        }
        check_rejects(result.rows_read, result.rows_rejected, result.reject_reasons, spec.output.max_reject_fraction)
        check_deletions(
            mode=self.mode,
            job=run.source_name,
            table_uri=resolved.output_uri,
            read_version=run.read_version,
            table_rows=count_rows(resolved.output_uri, run.read_version, resolved.storage_options),
            rows_read=result.rows_read,
            would_delete=len(result.missing_ids),
            max_delete_fraction=spec.output.max_delete_fraction,
            allow_empty=spec.output.allow_empty,
            allow_deletes=run.allow_deletes,
            run_fields=fields,
        )
        _check_exactly_once(result.parts, run.run_id)
        return run.summary(
            self.mode,
            resolved,
            # what the commit adds, including rows an earlier attempt of this run staged (rows_resumed)
            rows_embedded=result.rows_embedded,
            tokens=result.tokens,
            truncated=result.truncated,
            seconds_calibration=self.seconds_calibration,
            rows_resumed=counts.get("staged", 0),
            rows_migrated=counts.get("sliced", 0) if resolved.migration is not None else 0,
            rows_per_node=result.rows_per_node,
            **fields,
        )

    def commit(self, run: TableRun, result: PipelineResult, message: str) -> int:
        resolved, read_version = self.resolved, run.read_version
        uri, opts = resolved.output_uri, resolved.storage_options
        if updates_rows(self.mode):
            assert read_version is not None
            version = commit_changes(
                uri,
                new_fragments=result.fragments,
                delete_ids=[*result.replaced_ids, *result.missing_ids],
                read_version=read_version,
                storage_options=opts,
                message=message,
            )
            return read_version if version is None else version  # nothing changed: no new version
        return commit(
            uri,
            result.fragments,
            schema=resolved.schema,
            mode="append"
            if keeps_existing_rows(self.mode)
            else ("overwrite" if read_version is not None else "create"),
            read_version=read_version,
            storage_options=opts,
            message=message,
            strict=True,
        )

    def after(self, run: TableRun, summary: RunSummary) -> None:
        if self.resolved.migration is None:
            refresh_indexes_after(run, summary, changed=summary.table_version != run.read_version)
        elif finish_step(run, self.resolved, summary):
            # the job's [index] names the new settings' columns: they are the table's from the switch on (until
            # then the old columns keep the indexes they had; rows a step adds are scanned exactly)
            refresh_indexes_after(run, summary, changed=True)


def _pool_line(run: TableRun, result: PipelineResult) -> str:
    """The run record's ``pool``: the actor pool, or a small night's one encoder in this process."""
    if run.in_process is None:
        return f"{result.pool.describe()}; tokenizing in the {result.tokenize}"
    return f"{run.in_process.describe()}; {describe_process(result.pool)}"


def _check_exactly_once(parts: list[StagedPart], run_id: str) -> None:
    """Never commit an id twice: the staged parts must hold disjoint ids."""
    seen: set[Any] = set()
    dup: list[Any] = []
    for part in parts:
        for i in part.ids:
            if i in seen:
                dup.append(i)
            seen.add(i)
    if dup:
        raise RuntimeError(
            f"run {run_id}: {len(dup)} id(s) were staged twice (e.g. {dup[:5]}); nothing was committed. "
            f"This is a bug; the staging folder is kept for inspection"
        )


def _plan(
    resolved: ResolvedJob, run_id: str, progress: bool, *, mode: str, read_version: int | None, resume: bool
) -> EmbedPlan:
    spec = resolved.spec
    fields: dict[str, Any] = dict(
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
        pool=pool_request(resolved, progress),
        rows_per_block=spec.cluster.rows_per_block,
        rows_per_part=spec.cluster.rows_per_part,
        tokenize=spec.cluster.tokenize,
        chunking=resolved.chunking,
        calibration_uri=(
            calibration_uri(resolved.output_uri, resolved.calibration.fingerprint) if resolved.calibration else None
        ),
        mode=mode,
        read_version=read_version,
        resume=resume,
    )
    if resolved.migration is not None:
        fields.update(migration_plan_fields(resolved, read_version))  # the old encoder, and the new one beside it
    return EmbedPlan(**fields)
