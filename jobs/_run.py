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
from storage import (
    REJECTS_SCHEMA,
    ObjectStore,
    RunStaging,
    StagedPart,
    TableLock,
    append_rows,
    calibration_uri,
    commit,
    commit_changes,
    dataset_version,
    save_calibration,
    staged_runs,
)

from . import __version__
from ._calibrate import fit_for_job
from ._checks import ResolvedJob, check_job
from ._indexing import refresh_indexes
from ._spec import JobSpec, load_job, parse_job
from ._state import lookup_run, remember_run, state_dir

__all__ = ["RejectLimitExceeded", "RunNotResumable", "RunSummary", "new_run_id", "resume_run", "run_job"]

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
    rows_new: int = 0
    rows_changed: int = 0
    rows_unchanged: int = 0  # incremental: same content hash as the table's row; not touched
    rows_deleted: int = 0  # incremental with delete_missing: ids that left the input
    rows_resumed: int = 0  # staged by an earlier attempt of this run and committed now, not embedded again
    read_version: int | None = None  # the table version the run planned against
    error: str | None = None
    indexes: list[dict[str, Any]] = field(default_factory=list)  # the job's [index] section, after the commit
    #: Ray node id -> rows whose encoder actor ran there (summed over the committed parts; not in the runs table)
    rows_per_node: dict[str, int] = field(default_factory=dict)

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
        ("rows_new", pa.int64()),
        ("rows_changed", pa.int64()),
        ("rows_unchanged", pa.int64()),
        ("rows_deleted", pa.int64()),
        ("rows_resumed", pa.int64()),
        ("read_version", pa.int64()),
        ("error", pa.string()),
    ]
)


class RunNotResumable(ValueError):
    """``resume`` named a run that cannot be finished; the message says why and what to do."""


def new_run_id() -> str:
    """Sortable and unique: ``20261122T161500Z-1a2b3c4d``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def run_job(
    job: str | Path | JobSpec,
    *,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    resume: str | None = None,
    wait_s: float = 0.0,
    source_name: str | None = None,
) -> RunSummary:
    """Run one embedding job end to end and return its summary.

    Everything checkable is checked before Ray starts. The run holds the
    table's lock (waiting up to ``wait_s`` for another run), stages every batch
    in its staging folder, and makes exactly one commit: the table gets one new
    version, or none when an incremental run finds nothing changed. A run that
    fails or is killed leaves the table at its previous version; running the
    job again (or ``resume=RUN_ID``) finishes it without embedding the rows it
    already staged.
    """
    t0 = time.perf_counter()
    started = datetime.now(UTC)
    if source_name is None:
        source_name = str(job) if not isinstance(job, JobSpec) else (job.name or "job")
    spec = job if isinstance(job, JobSpec) else load_job(job, overrides)
    resolved = check_job(spec, source_name=source_name)
    opts = resolved.storage_options
    uri = resolved.output_uri
    lock = TableLock(uri, run_id=resume or new_run_id(), storage_options=opts)
    lock.acquire(wait_s=wait_s)
    staging: RunStaging | None = None
    summary: RunSummary | None = None
    try:
        read_version = dataset_version(uri, opts) if resolved.output_exists else None
        mode = resolved.mode
        staging = _resumable(resolved, read_version, resume)
        resumed = staging is not None
        if staging is None:
            staging = RunStaging(uri, lock.run_id, opts)
            staging.write_record(
                {
                    "run_id": staging.run_id,
                    "status": "running",
                    "job": source_name,
                    "spec": spec.model_dump(mode="json"),
                    "mode": mode,
                    "read_version": read_version,
                    "provenance": resolved.provenance.to_json(),
                    "started_at": started.isoformat(),
                    "attempts": 1,
                }
            )
        else:
            lock.run_id = staging.run_id
            record = staging.read_record() or {}
            staging.update_record(status="running", attempts=int(record.get("attempts", 1)) + 1)
            logger.info("resuming run %s: its staged rows are kept, the rest is embedded now", staging.run_id)
        run_id = staging.run_id
        remember_run(run_id, uri, source_name, spec.storage.model_dump(exclude_none=True))
        logger.info("run %s (%s): %s -> %s", run_id, mode, resolved.source.uri, uri)
        summary = _execute(resolved, staging, lock, mode, read_version, resumed, progress, source_name, started, t0)
        if resolved.spec.index is not None:
            summary.indexes = refresh_indexes(resolved, changed=summary.table_version != read_version)
        return summary
    except BaseException as exc:
        if staging is not None and summary is None:
            _record_failure(resolved, staging, exc, source_name, started, t0)
        raise
    finally:
        lock.release()


def resume_run(
    run_id: str,
    *,
    table_uri: str | None = None,
    progress: bool = True,
    address: str | None = None,
    wait_s: float = 0.0,
) -> RunSummary:
    """Finish run ``run_id`` with the job config it started with (kept in its staging record)."""
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
    if record is None:
        raise RunNotResumable(
            f"run {run_id} has no staging record next to {uri!r}: it committed already, was cleaned up "
            f"by embedjob gc, or belongs to another table"
        )
    spec = parse_job(record["spec"], source=str(record.get("job", run_id)))
    if address:
        spec = spec.model_copy(update={"cluster": spec.cluster.model_copy(update={"address": address})})
    return run_job(spec, progress=progress, resume=run_id, wait_s=wait_s, source_name=record.get("job"))


def _execute(
    resolved: ResolvedJob,
    staging: RunStaging,
    lock: TableLock,
    mode: str,
    read_version: int | None,
    resumed: bool,
    progress: bool,
    source_name: str,
    started: datetime,
    t0: float,
) -> RunSummary:
    spec, opts, uri, run_id = resolved.spec, resolved.storage_options, resolved.output_uri, staging.run_id
    seconds_calibration = 0.0
    with ray_session(spec.cluster.address):
        if resolved.calibration_pending:
            report = fit_for_job(resolved, progress=progress)
            resolved = resolved.with_calibration(report.calibration, f"fitted now on {report.rows_sampled:,} rows")
            seconds_calibration = report.seconds
        elif resolved.calibration is not None:
            # kept next to the table (content-addressed): the actors load it from there, and so do
            # the table's queries later
            save_calibration(uri, resolved.calibration, storage_options=opts)
        plan = _plan(resolved, run_id, progress, mode=mode, read_version=read_version, resume=resumed)
        result = run_pipeline(plan, delete_missing=spec.output.delete_missing)
    limit = spec.output.max_reject_fraction
    if result.rows_read and result.rows_rejected / result.rows_read > limit:
        raise RejectLimitExceeded(result.rows_rejected, result.rows_read, limit, result.reject_reasons)
    parts = staging.parts()
    fragments = [f for p in parts for f in p.fragments]
    _check_exactly_once(parts, run_id)
    lock.check()  # still ours: no other run can have committed since read_version
    message = f"embedjob run {run_id}"
    if mode == "incremental":
        assert read_version is not None
        version = commit_changes(
            uri,
            new_fragments=fragments,
            delete_ids=[*result.replaced_ids, *result.missing_ids],
            read_version=read_version,
            storage_options=opts,
            message=message,
        )
        version = read_version if version is None else version  # nothing changed: no new version
    else:
        version = commit(
            uri,
            fragments,
            schema=resolved.schema,
            mode="append" if mode == "append" else ("overwrite" if read_version is not None else "create"),
            read_version=read_version,
            storage_options=opts,
            message=message,
            strict=True,
        )
    if result.reject_fragments:  # this attempt's only: a resumed run re-checks every row it reads
        commit(
            resolved.rejects_uri,
            result.reject_fragments,
            schema=REJECTS_SCHEMA,
            mode="append",
            read_version=dataset_version(resolved.rejects_uri, opts),
            storage_options=opts,
            message=message,
        )
    counts = result.counts
    summary = RunSummary(
        run_id=run_id,
        job_name=spec.name or Path(source_name).stem,
        table_uri=uri,
        mode=mode,
        status="committed",
        table_version=version,
        rows_read=result.rows_read,
        # what the commit added, including rows an earlier attempt of this run staged (rows_resumed)
        rows_embedded=sum(len(p.ids) for p in parts),
        rows_rejected=result.rows_rejected,
        tokens=sum(p.tokens for p in parts),
        truncated=sum(p.truncated for p in parts),
        seconds=time.perf_counter() - t0,
        seconds_pipeline=result.seconds,
        started_at=started,
        finished_at=datetime.now(UTC),
        pool=f"{result.pool.describe()}; tokenizing in the {result.tokenize}",
        reject_reasons=result.reject_reasons,
        calibration=resolved.calibration.fingerprint if resolved.calibration else None,
        calibration_origin=resolved.calibration_origin,
        seconds_calibration=seconds_calibration,
        rows_new=counts.get("new", 0),
        rows_changed=counts.get("changed", 0),
        rows_unchanged=counts.get("unchanged", 0),
        rows_deleted=len(result.missing_ids),
        rows_resumed=counts.get("staged", 0),
        read_version=read_version,
        rows_per_node=_rows_per_node(parts),
    )
    append_rows(resolved.runs_uri, summary.record(), storage_options=opts)
    staging.remove()  # committed: its parts are in the table now
    return summary


def _rows_per_node(parts: list[StagedPart]) -> dict[str, int]:
    """Rows per encoding node over the committed parts, most first (parts staged before nodes were recorded
    count nowhere)."""
    total: dict[str, int] = {}
    for part in parts:
        for node, n in part.nodes.items():
            total[node] = total.get(node, 0) + n
    return most_rows_first(total)


def most_rows_first(per_node: dict[str, int]) -> dict[str, int]:
    """Rows per node, the node with most rows first (ties by node id)."""
    return dict(sorted(per_node.items(), key=lambda kv: (-kv[1], kv[0])))


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


def _resumable(resolved: ResolvedJob, read_version: int | None, resume: str | None) -> RunStaging | None:
    """The unfinished run of this job to finish: the one named, else the newest that planned against the
    table's current version with the same config; None to start a new run."""
    opts, uri = resolved.storage_options, resolved.output_uri
    candidates = staged_runs(uri, opts)
    if resume is not None:
        named = [s for s in candidates if s.run_id == resume]
        if not named or named[0].read_record() is None:
            raise RunNotResumable(
                f"run {resume} has no staging folder next to {uri!r}: it committed already, was cleaned up, "
                f"or belongs to another table"
            )
        candidates = named
    for staging in reversed(candidates):
        record = staging.read_record()
        if record is None or record.get("status") == "committed":
            continue
        why = None
        if record.get("read_version") != read_version:
            why = (
                f"it planned against table version {record.get('read_version')}, the table is at {read_version} "
                f"now (another run committed meanwhile)"
            )
        elif record.get("provenance") != resolved.provenance.to_json():
            why = "the job's model or granularities differ from the run's"
        elif record.get("mode") != resolved.mode:
            why = f"the run used mode {record.get('mode')!r}, this job {resolved.mode!r}"
        if why is None:
            return staging
        if resume is not None:
            raise RunNotResumable(f"run {resume} cannot be resumed: {why}; run the job again for a new run")
        if record.get("read_version") != read_version:
            _abandon(resolved, staging, why)
        else:
            logger.info("not resuming run %s: %s", staging.run_id, why)
    return None


def _record_failure(
    resolved: ResolvedJob, staging: RunStaging, exc: BaseException, source_name: str, started: datetime, t0: float
) -> None:
    """Best effort (the store may be what failed): the staging record and the runs table say it failed."""
    error = f"{type(exc).__name__}: {exc}"
    try:
        staging.update_record(status="failed", error=error, failed_at=datetime.now(UTC).isoformat())
        _record_unfinished(resolved, staging, "failed", error, started, time.perf_counter() - t0, source_name)
    except Exception as inner:
        logger.warning("could not record the failure of run %s: %s", staging.run_id, inner)


def _record_unfinished(
    resolved: ResolvedJob,
    staging: RunStaging,
    status: str,
    error: str,
    started: datetime,
    seconds: float,
    source_name: str,
) -> None:
    """A runs-table row for a run that did not commit (failed, or abandoned)."""
    record = staging.read_record() or {}
    summary = RunSummary(
        run_id=staging.run_id,
        job_name=resolved.spec.name or Path(str(record.get("job") or source_name)).stem,
        table_uri=resolved.output_uri,
        mode=str(record.get("mode", "")),
        status=status,
        table_version=None,
        rows_read=0,
        rows_embedded=0,
        rows_rejected=0,
        tokens=0,
        truncated=0,
        seconds=seconds,
        seconds_pipeline=0.0,
        started_at=started,
        finished_at=datetime.now(UTC),
        pool="",
        read_version=record.get("read_version"),
        error=error[:2000],
    )
    append_rows(resolved.runs_uri, summary.record(), storage_options=resolved.storage_options)


def _abandon(resolved: ResolvedJob, staging: RunStaging, why: str) -> None:
    """A run that can never be resumed (the table moved past the version it read): record it and remove
    its staging folder. Its fragment files are orphans that ``embedjob gc`` removes."""
    record = staging.read_record() or {}
    try:
        started = datetime.fromisoformat(str(record.get("started_at")))
    except ValueError:
        started = datetime.now(UTC)
    try:
        _record_unfinished(resolved, staging, "abandoned", f"not resumable: {why}", started, 0.0, "job")
        staging.remove()
        logger.info("run %s abandoned (%s); its staging folder was removed", staging.run_id, why)
    except Exception as exc:  # gc will get it
        logger.warning("could not clean up abandoned run %s: %s", staging.run_id, exc)


def _plan(
    resolved: ResolvedJob, run_id: str, progress: bool, *, mode: str, read_version: int | None, resume: bool
) -> EmbedPlan:
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
        rows_per_part=spec.cluster.rows_per_part,
        tokenize=spec.cluster.tokenize,
        progress=progress,
        calibration_uri=(
            calibration_uri(resolved.output_uri, resolved.calibration.fingerprint) if resolved.calibration else None
        ),
        mode=mode,
        read_version=read_version,
        resume=resume,
    )
