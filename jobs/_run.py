"""The run lifecycle: check, plan, run the pipeline on Ray, commit once, record the run."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from cluster import EmbedPlan, ray_session, run_pipeline
from storage import (
    REJECTS_SCHEMA,
    ObjectStore,
    RunIdError,
    RunStaging,
    StagedPart,
    TableLock,
    append_rows,
    calibration_uri,
    commit,
    commit_changes,
    commit_message,
    committed_by,
    count_rows,
    dataset_version,
    error_line,
    is_run_id,
    new_run_id,
    read_rows,
    save_calibration,
    staged_runs,
    table_exists,
)

from . import __version__
from ._calibrate import fit_for_job
from ._checks import ResolvedJob, check_job
from ._guards import RejectLimitExceeded, check_deletions, check_rejects
from ._indexing import refresh_indexes
from ._spec import JobSpec, load_job, parse_job
from ._state import lookup_run, remember_run, state_dir

__all__ = ["RejectLimitExceeded", "RunNotResumable", "RunSummary", "new_run_id", "resume_run", "run_job"]

logger = logging.getLogger("embedjob")

#: bookkeeping after a commit, in order: each step is retried, and one that still fails stays pending in the
#: run's staging record for the next run of the job (or `embedjob resume RUN_ID`) to finish
_AFTER_COMMIT = ("rejects", "runs")
_BOOKKEEPING_ATTEMPTS = 3


@dataclass
class RunSummary:
    run_id: str
    job_name: str
    table_uri: str
    mode: str
    status: str
    table_version: int | None
    started_at: datetime
    finished_at: datetime
    rows_read: int = 0
    rows_embedded: int = 0
    rows_rejected: int = 0
    tokens: int = 0
    truncated: int = 0
    seconds: float = 0.0
    seconds_pipeline: float = 0.0
    pool: str = ""
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
    #: what went wrong after the commit (bookkeeping that could not be finished), and what to run about it
    warnings: list[str] = field(default_factory=list)

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

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (kept in the staging record across the commit)."""
        data = asdict(self)
        for key in ("started_at", "finished_at"):
            data[key] = data[key].isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("started_at", "finished_at"):
            values[key] = datetime.fromisoformat(values[key])
        return cls(**values)


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
    version, or none when an incremental run finds nothing changed. A run that
    fails or is killed leaves the table at its previous version; running the
    job again (or ``resume=RUN_ID``) finishes it without embedding the rows it
    already staged. A run that would delete more of the table than
    ``[output] max_delete_fraction`` allows is refused before its commit
    (:class:`DeletionRefused`) unless ``allow_deletes``.

    Once the commit succeeded the run is ``committed``, whatever happens
    after: bookkeeping that still fails after retries (the rejects table, the
    runs table) becomes a warning in ``RunSummary.warnings`` and is finished by
    the job's next run.
    """
    t0 = time.perf_counter()
    started = datetime.now(UTC)
    if source_name is None:
        source_name = str(job) if not isinstance(job, JobSpec) else (job.name or "job")
    if resume is not None and not is_run_id(resume):
        raise RunIdError(resume)
    spec = job if isinstance(job, JobSpec) else load_job(job, overrides)
    resolved = check_job(spec, source_name=source_name)
    opts = resolved.storage_options
    uri = resolved.output_uri
    lock = TableLock(uri, run_id=resume or new_run_id(), storage_options=opts)
    lock.acquire(wait_s=wait_s)
    attempt = _Attempt()
    try:
        finished = finish_committed_runs(resolved)
        if resume is not None and resume in finished:
            return finished[resume]  # it had committed: its bookkeeping is done now
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
        attempt.staging = staging
        run_id = staging.run_id
        remember_run(run_id, uri, source_name, spec.storage.model_dump(exclude_none=True))
        logger.info("run %s (%s): %s -> %s", run_id, mode, resolved.source.uri, uri)
        summary = _execute(
            resolved, attempt, lock, mode, read_version, resumed, progress, source_name, started, t0, allow_deletes
        )
        if resolved.spec.index is not None:
            try:
                summary.indexes = refresh_indexes(resolved, changed=summary.table_version != read_version)
            except Exception as exc:  # committed: an index is bookkeeping too
                summary.warnings.append(
                    f"the indexes could not be refreshed ({error_line(exc)}); run `embedjob index {uri} --all`"
                )
        return summary
    except BaseException as exc:
        if attempt.staging is not None and attempt.committed is None:
            landed = _landed_anyway(resolved, attempt.staging, exc)
            if landed is not None:
                return landed
            _record_failure(resolved, attempt.staging, exc, source_name, started, t0)
        if attempt.committed is not None and isinstance(exc, Exception):
            # the commit is the truth: nothing after it turns the run into a failed one
            attempt.committed.warnings.append(f"after the commit: {error_line(exc)}")
            return attempt.committed
        raise
    finally:
        lock.release()  # (never raises: it cannot hide the run's outcome)


def resume_run(
    run_id: str,
    *,
    table_uri: str | None = None,
    progress: bool = True,
    address: str | None = None,
    wait_s: float = 0.0,
    allow_deletes: bool = False,
) -> RunSummary:
    """Finish run ``run_id`` with the job config it started with (kept in its staging record)."""
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
    if record is None:
        raise RunNotResumable(
            f"run {run_id} has no staging record next to {uri!r}: it committed already, was cleaned up "
            f"by embedjob gc, or belongs to another table"
        )
    spec = parse_job(record["spec"], source=str(record.get("job", run_id)))
    if address:
        spec = spec.model_copy(update={"cluster": spec.cluster.model_copy(update={"address": address})})
    return run_job(
        spec,
        progress=progress,
        resume=run_id,
        wait_s=wait_s,
        source_name=record.get("job"),
        allow_deletes=allow_deletes,
    )


@dataclass
class _Attempt:
    """What one call of run_job got to: its staging folder, and its summary once the commit succeeded."""

    staging: RunStaging | None = None
    committed: RunSummary | None = None


def _execute(
    resolved: ResolvedJob,
    attempt: _Attempt,
    lock: TableLock,
    mode: str,
    read_version: int | None,
    resumed: bool,
    progress: bool,
    source_name: str,
    started: datetime,
    t0: float,
    allow_deletes: bool,
) -> RunSummary:
    staging = attempt.staging
    assert staging is not None
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
    counts = result.counts
    fields = {
        "rows_read": result.rows_read,
        "rows_rejected": result.rows_rejected,
        "reject_reasons": result.reject_reasons,
        "rows_new": counts.get("new", 0),
        "rows_changed": counts.get("changed", 0),
        "rows_unchanged": counts.get("unchanged", 0),
        "rows_deleted": len(result.missing_ids),
        "pool": f"{result.pool.describe()}; tokenizing in the {result.tokenize}",
        "seconds_pipeline": result.seconds,
    }
    check_rejects(result.rows_read, result.rows_rejected, result.reject_reasons, spec.output.max_reject_fraction)
    check_deletions(
        mode=mode,
        job=source_name,
        table_uri=uri,
        read_version=read_version,
        table_rows=count_rows(uri, read_version, opts),
        rows_read=result.rows_read,
        would_delete=len(result.missing_ids),
        max_delete_fraction=spec.output.max_delete_fraction,
        allow_empty=spec.output.allow_empty,
        allow_deletes=allow_deletes,
        run_fields=fields,
    )
    parts = staging.parts()
    fragments = [f for p in parts for f in p.fragments]
    _check_exactly_once(parts, run_id)
    summary = RunSummary(
        run_id=run_id,
        job_name=spec.name or Path(source_name).stem,
        table_uri=uri,
        mode=mode,
        status="committed",
        table_version=None,
        # what the commit adds, including rows an earlier attempt of this run staged (rows_resumed)
        rows_embedded=sum(len(p.ids) for p in parts),
        tokens=sum(p.tokens for p in parts),
        truncated=sum(p.truncated for p in parts),
        seconds=0.0,
        started_at=started,
        finished_at=started,
        calibration=resolved.calibration.fingerprint if resolved.calibration else None,
        calibration_origin=resolved.calibration_origin,
        seconds_calibration=seconds_calibration,
        rows_resumed=counts.get("staged", 0),
        read_version=read_version,
        rows_per_node=_rows_per_node(parts),
        **fields,
    )
    # the summary goes into the staging record before the commit: a driver killed right after the commit
    # leaves it there, and the table's commit message says the commit happened
    staging.update_record(
        status="committing",
        summary=summary.to_json(),
        rejects=result.reject_fragments,
        rejects_version=dataset_version(resolved.rejects_uri, opts),  # where to look for its rejects' commit
        pending=list(_AFTER_COMMIT),
    )
    lock.check()  # renewed now, conditionally: still ours, with a whole lease ahead for the commit
    message = commit_message(run_id)
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
    # ---- committed: from here on nothing can make this run a failed one
    summary.table_version = version
    summary.seconds = time.perf_counter() - t0
    summary.finished_at = datetime.now(UTC)
    attempt.committed = summary
    _finish_bookkeeping(resolved, staging, summary)
    return summary


def finish_committed_runs(resolved: ResolvedJob) -> dict[str, RunSummary]:
    """Runs of this table that committed but whose bookkeeping is not finished (their driver died right after
    the commit, or the rejects or runs table could not be written): finish it now. Returns their summaries.

    A run whose record says it was committing, and whose commit is not in the table, did not commit: it is
    marked failed (and can be resumed like any failed run).
    """
    done: dict[str, RunSummary] = {}
    for staging in staged_runs(resolved.output_uri, resolved.storage_options):
        summary = _committed(resolved, staging)
        if summary is not None:
            logger.warning(
                "run %s committed version %s; finishing its bookkeeping now", staging.run_id, summary.table_version
            )
            _finish_bookkeeping(resolved, staging, summary)
            done[staging.run_id] = summary
    return done


def _committed(resolved: ResolvedJob, staging: RunStaging) -> RunSummary | None:
    """The summary of ``staging``'s run if it committed, from its record; the table's commit message decides
    for a run that was committing (None, and the record marked failed, when the commit is not there)."""
    uri, opts = resolved.output_uri, resolved.storage_options
    record = staging.read_record() or {}
    status = record.get("status")
    if status not in ("committing", "committed") or not record.get("summary"):
        return None
    summary = RunSummary.from_json(record["summary"])
    summary.table_version = record.get("table_version")
    if status == "committed":
        return summary
    version = committed_by(uri, staging.run_id, record.get("read_version"), opts)
    if version is None and summary.mode == "incremental" and not _changes(summary):
        version = record.get("read_version")  # nothing to commit: it made no version
    if version is None:
        staging.update_record(status="failed", error="stopped before its commit; nothing was committed", summary=None)
        return None
    summary.table_version = version
    staging.update_record(status="committed", table_version=version)
    return summary


def _landed_anyway(resolved: ResolvedJob, staging: RunStaging, exc: BaseException) -> RunSummary | None:
    """A run that failed while committing (the commit call raised: a timeout, a dropped connection) may still
    have committed: the table's commit message decides. Its summary (bookkeeping finished) when it did."""
    try:
        if (staging.read_record() or {}).get("status") != "committing":
            return None
        summary = _committed(resolved, staging)
    except Exception as inner:  # the store is down: leave the record "committing" for the next run to decide
        logger.warning("run %s: could not tell whether its commit landed (%s)", staging.run_id, error_line(inner))
        raise exc from None
    if summary is None or not isinstance(exc, Exception):
        return None
    summary.warnings.append(f"the commit reported {error_line(exc)}, but the table has this run's commit")
    _finish_bookkeeping(resolved, staging, summary)
    return summary


def _changes(summary: RunSummary) -> bool:
    """Whether an incremental run had anything to commit (new fragments or deletions)."""
    return bool(summary.rows_embedded or summary.rows_deleted or summary.rows_changed)


def _finish_bookkeeping(resolved: ResolvedJob, staging: RunStaging, summary: RunSummary) -> None:
    """After the commit: the staging record says committed, then the rejects and the run record are written
    (each retried; each once: a step already done, by an earlier attempt, is seen and skipped), then the staging
    folder goes. A step that still fails stays pending in the record and becomes a warning in ``summary``."""
    uri, run_id = resolved.output_uri, staging.run_id
    ok = after_commit(
        summary,
        lambda: staging.update_record(status="committed", table_version=summary.table_version),
        f"the staging record of run {run_id} could not be marked committed ({{error}}); the table's commit "
        f"message says it is, and the job's next run finishes its bookkeeping",
    )
    record = (staging.read_record() if ok else None) or {}
    pending = list(record.get("pending", _AFTER_COMMIT)) if ok else list(_AFTER_COMMIT)
    rejects = list(record.get("rejects") or [])
    steps = {
        "rejects": lambda: _commit_rejects(resolved, run_id, rejects, record.get("rejects_version")),
        "runs": lambda: append_run_record(resolved, summary),
    }
    for step in list(pending):
        what = "the rejected rows" if step == "rejects" else "the run's record in the runs table"
        done = after_commit(
            summary,
            steps[step],
            f"run {run_id} committed version {summary.table_version}, but {what} could not be written "
            f"({{error}}); the job's next run (or `embedjob resume {run_id} --table {uri}`) writes it",
        )
        if done:
            pending.remove(step)
            retry(lambda: staging.update_record(pending=pending))
    if not pending:
        after_commit(
            summary,
            staging.remove,
            f"the staging folder of committed run {run_id} could not be removed ({{error}}); "
            f"`embedjob gc {uri}` removes it",
        )
    for warning in summary.warnings:
        logger.warning(warning)


def _commit_rejects(resolved: ResolvedJob, run_id: str, fragments: list[str], after: int | None) -> None:
    """This attempt's rejected rows into the rejects table, once: a commit of this run among the rejects
    table's versions after ``after`` (its version when the run committed) is not repeated."""
    uri, opts = resolved.rejects_uri, resolved.storage_options
    if not fragments or committed_by(uri, run_id, after, opts) is not None:
        return
    commit(
        uri,
        fragments,
        schema=REJECTS_SCHEMA,
        mode="append",
        read_version=dataset_version(uri, opts),
        storage_options=opts,
        message=commit_message(run_id),
    )


def append_run_record(resolved: ResolvedJob, summary: RunSummary) -> None:
    """The run's row in the runs table, once."""
    uri, opts = resolved.runs_uri, resolved.storage_options
    if table_exists(uri, opts) and any(
        r["run_id"] == summary.run_id and r["status"] == "committed"
        for r in read_rows(uri, ["run_id", "status"], storage_options=opts)
    ):
        return
    append_rows(uri, summary.record(), storage_options=opts)


def after_commit(summary: RunSummary, step: Callable[[], Any], failed: str) -> bool:
    """One piece of bookkeeping after a commit, retried; if it still fails, ``failed`` (with ``{error}``) becomes
    a warning in ``summary``, never an exception: the commit is what counts."""
    ok, error = retry(step)
    if not ok:
        summary.warnings.append(failed.format(error=error))
    return ok


def retry(step: Any, attempts: int = _BOOKKEEPING_ATTEMPTS, delay_s: float = 1.0) -> tuple[bool, str]:
    """Run ``step`` up to ``attempts`` times (a store that blinks); (True, "") or (False, the last error)."""
    error = ""
    for i in range(attempts):
        try:
            step()
            return True, ""
        except Exception as exc:
            error = error_line(exc)
            if i + 1 < attempts:
                time.sleep(delay_s * 2**i)
    return False, error


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
        if record is None or record.get("status") in ("committed", "committing"):
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
    """Best effort (the store may be what failed): the staging record and the runs table say it failed, with
    the counts the run got to (a guard's refusal carries them)."""
    error = f"{type(exc).__name__}: {exc}"
    try:
        staging.update_record(status="failed", error=error, failed_at=datetime.now(UTC).isoformat(), summary=None)
        _record_unfinished(
            resolved,
            staging,
            "failed",
            error,
            started,
            time.perf_counter() - t0,
            source_name,
            getattr(exc, "run_fields", None) or {},
        )
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
    counts: dict[str, Any] | None = None,
) -> None:
    """A runs-table row for a run that did not commit (failed, or abandoned), with what it counted."""
    record = staging.read_record() or {}
    summary = RunSummary(
        run_id=staging.run_id,
        job_name=resolved.spec.name or Path(str(record.get("job") or source_name)).stem,
        table_uri=resolved.output_uri,
        mode=str(record.get("mode", "")),
        status=status,
        table_version=None,
        seconds=seconds,
        started_at=started,
        finished_at=datetime.now(UTC),
        read_version=record.get("read_version"),
        error=error[:2000],
        **(counts or {}),
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
