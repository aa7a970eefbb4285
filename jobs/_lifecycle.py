"""One run lifecycle for every kind of run: check -> lock -> Ray session -> plan -> execute -> commit -> record.

An embedding run and a backfill differ only in their :class:`Work`: what they execute on Ray and how they
commit. Everything else is written once here: the table's lock, the staging record (new, or a resumed
run's), the summary recorded before the commit, the commit's message, the bookkeeping after it, and the
failure record when anything stops the run. Calibration has no table commit: it shares the check and the
Ray session (:func:`in_ray_session`).

An incremental night with nothing changed stops after the lock: the input's ids and hashes are compared with
the table's in this process (``_nochange``), and the night is recorded without staging, Ray or a commit. A night
with few rows to embed (the same comparison counts them) runs its work in this process, without Ray.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cluster import PoolRequest, ProgressDisplay, Stage, ray_running, ray_session, timed
from storage import (
    AFTER_COMMIT,
    LATEST_GOOD,
    REJECTS_SCHEMA,
    RunIdError,
    RunStaging,
    RunStatus,
    StagingRecord,
    TableLock,
    append_rows,
    commit,
    commit_message,
    committed_by,
    dataset_version,
    error_line,
    is_run_id,
    move_latest_good,
    new_run_id,
    record_run,
    staged_runs,
    tag_run,
)
from storage.vocab import updates_rows

from ._checks import ResolvedJob, check_job
from ._gate import evaluate_gate, gate_line
from ._indexing import refresh_indexes
from ._nochange import InProcess, Unchanged, before_ray
from ._spec import JobSpec, load_job, with_overrides
from ._summary import RunSummary
from .state import remember_run

__all__ = ["RunNotResumable", "TableRun", "Work", "checked_job", "in_ray_session", "pool_request", "run_on_table"]

logger = logging.getLogger("embedjob")

_BOOKKEEPING_ATTEMPTS = 3
#: what each bookkeeping step (storage.AFTER_COMMIT) writes, for its warning
_STEP_WHAT = {
    "tags": "the run's tag on that version",
    "rejects": "the rejected rows",
    "runs": "the run's record in the runs table",
}
T = TypeVar("T")


class RunNotResumable(ValueError):
    """``resume`` named a run that cannot be finished; the message says why and what to do."""


def pool_request(resolved: ResolvedJob, progress: bool) -> PoolRequest:
    """What the job's ``[cluster]`` asks of the actor pool."""
    c = resolved.spec.cluster
    # backend "int8" runs on CPU: its actors hold no GPU (``_backend_problems`` refuses gpus_per_actor > 0)
    gpus = 0 if resolved.spec.model.backend == "int8" else c.gpus_per_actor
    return PoolRequest(actors=c.actors, gpus_per_actor=gpus, cpus_per_actor=c.cpus_per_actor, progress=progress)


def checked_job(
    job: str | Path | JobSpec,
    overrides: dict[str, Any] | None,
    source_name: str | None = None,
    *,
    resume: str | None = None,
    **purpose: Any,
) -> tuple[ResolvedJob, str]:
    """The lifecycle's first step: a run id to resume refused unless it is one (before anything is read), the job
    file (or spec) read, with ``overrides``, and checked for what it is run for (``purpose``: ``check_job``'s
    ``backfill=`` or ``purpose=``); and the name its records carry."""
    if resume is not None and not is_run_id(resume):
        raise RunIdError(resume)
    if source_name is None:
        source_name = str(job) if not isinstance(job, JobSpec) else (job.name or "job")
    with timed("job checks"):
        if isinstance(job, JobSpec):
            spec = with_overrides(job, overrides, source=source_name)
        else:
            spec = load_job(job, overrides)
        return check_job(spec, source_name=source_name, **purpose), source_name


def in_ray_session(resolved: ResolvedJob, step: Callable[[], T]) -> T:
    """``step`` on the job's Ray cluster (the embedded local one unless an address is given)."""
    with ray_session(resolved.spec.cluster.address):
        return step()


@dataclass
class TableRun:
    """One attempt at a run on a table: what its work needs, and its summary once the commit succeeded."""

    resolved: ResolvedJob
    lock: TableLock
    source_name: str
    progress: bool
    started: datetime
    t0: float
    read_version: int | None = None
    staging: RunStaging | None = None
    resumed: bool = False
    allow_deletes: bool = False
    committed: RunSummary | None = None
    #: where the run's progress shows (its stage, rows done of the total, tokens, rows/s)
    display: ProgressDisplay | None = None
    #: a small night: its few rows embedded in this process, without Ray (None: on Ray, the actor pool)
    in_process: InProcess | None = None

    @property
    def run_id(self) -> str:
        """The staging folder's run id (a resumed run's), or before staging (a night with nothing to do, which
        stages nothing) the lock's."""
        return self.staging.run_id if self.staging is not None else self.lock.run_id

    @property
    def job_name(self) -> str:
        return self.resolved.spec.name or Path(self.source_name).stem

    def summary(self, mode: str, resolved: ResolvedJob, **counts: Any) -> RunSummary:
        """The run's summary before its commit (committed, no version yet) with the work's ``counts``;
        ``resolved``: the job as the work ran it (with the calibration it fitted, if any)."""
        cal = resolved.calibration
        return RunSummary(
            run_id=self.run_id,
            job_name=self.job_name,
            table_uri=resolved.output_uri,
            mode=mode,
            status="committed",
            table_version=None,
            started_at=self.started,
            finished_at=self.started,
            read_version=self.read_version,
            calibration=cal.fingerprint if cal else None,
            calibration_origin=resolved.calibration_origin,
            chunked=resolved.chunking is not None,
            **counts,
        )


class Work(Protocol):
    """What one kind of run does on a table; the lifecycle does the rest."""

    #: what the staging record and the runs table call the run ("incremental", "backfill l3_d16", ...)
    mode: str

    def execute(self, run: TableRun) -> Any:
        """Inside the Ray session (or, a small night, ``run.in_process``: in this process without Ray): stage the
        run's work in ``run.staging``; commit nothing."""

    def summarize(self, run: TableRun, result: Any) -> RunSummary:
        """The run's summary (status committed, no version yet); raise to refuse the commit (a guard)."""

    def commit(self, run: TableRun, result: Any, message: str) -> int:
        """The run's one commit (with ``message``); the table version it made."""

    def after(self, run: TableRun, summary: RunSummary) -> None:
        """After the commit and its bookkeeping (indexes): failures become warnings in ``summary``."""


def run_on_table(
    resolved: ResolvedJob,
    work: Callable[[int | None], Work],
    *,
    source_name: str,
    progress: bool,
    resume: str | None = None,
    wait_s: float = 0.0,
    allow_deletes: bool = False,
) -> RunSummary:
    """Run ``work`` (made for the table's version) on the checked job's table: lock, stage (a new run or the
    resumed one), execute on Ray, summarize, commit once, record. A failure is recorded and re-raised; once the
    commit landed nothing turns the run into a failed one."""
    run = TableRun(
        resolved=resolved,
        lock=TableLock(resolved.output_uri, run_id=resume or new_run_id(), storage_options=resolved.storage_options),
        source_name=source_name,
        progress=progress,
        started=datetime.now(UTC),
        t0=time.perf_counter(),
        allow_deletes=allow_deletes,
    )
    run.display = ProgressDisplay.for_command("run", show=progress)
    with run.display:
        with timed("lock"):
            run.lock.acquire(wait_s=wait_s)
        return _run_locked(run, work, resume)


def _run_locked(run: TableRun, work: Callable[[int | None], Work], resume: str | None) -> RunSummary:
    """``run_on_table`` once the table's lock is held: the lock is released at the end, whatever happens."""
    resolved, display = run.resolved, run.display
    assert display is not None
    try:
        finished = finish_committed_runs(resolved)
        if resume is not None and resume in finished:
            return finished[resume]  # it had committed: its bookkeeping is done now
        uri, opts = resolved.output_uri, resolved.storage_options
        run.read_version = dataset_version(uri, opts) if resolved.output_exists else None
        todo = work(run.read_version)
        # a process that holds a Ray session already (a notebook's, a test's) uses it: never a night without Ray
        with timed("no-change check"):
            night = before_ray(resolved, todo.mode, run.read_version, resume, without_ray=not ray_running())
        if isinstance(night, Unchanged):
            return _record_unchanged(run, todo, night)
        run.in_process = night
        with timed("staging"):
            _stage(run, todo.mode, resume)
        display.what = f"run {run.run_id}"
        logger.info("run %s (%s): %s -> %s", run.run_id, todo.mode, resolved.source.uri, uri)
        # a small night runs in this process, without Ray (the work reads run.in_process)
        result = todo.execute(run) if night is not None else in_ray_session(resolved, lambda: todo.execute(run))
        summary = todo.summarize(run, result)
        # the summary goes into the staging record before the commit: a driver killed right after the commit
        # leaves it there, and the table's commit message says the commit happened
        run.staging.update_record(
            status=RunStatus.COMMITTING,
            summary=summary.to_json(),
            rejects=list(result.reject_fragments),
            rejects_version=dataset_version(resolved.rejects_uri, opts),  # where to look for its rejects' commit
            pending=list(AFTER_COMMIT),
        )
        run.lock.check()  # renewed now, conditionally: still ours, with a whole lease ahead for the commit
        display.stage(Stage.COMMITTING)
        with timed("commit"):
            version = todo.commit(run, result, commit_message(run.run_id))
        # ---- committed: from here on nothing can make this run a failed one
        summary.table_version = version
        summary.seconds = time.perf_counter() - run.t0
        summary.finished_at = datetime.now(UTC)
        run.committed = summary
        with timed("after the commit (gate, records, indexes, tags)"):
            check_gate(resolved, summary)  # before the run's record is written: it holds the gate's figure
            _finish_bookkeeping(resolved, run.staging, summary)
            todo.after(run, summary)
            mark_good(resolved, summary)
        return summary
    except BaseException as exc:
        if run.staging is not None and run.committed is None:
            landed = _landed_anyway(resolved, run.staging, exc)
            if landed is not None:
                return landed
            _record_failure(run, exc)
        if run.committed is not None and isinstance(exc, Exception):
            # the commit is the truth: nothing after it turns the run into a failed one
            run.committed.warnings.append(f"after the commit: {error_line(exc)}")
            return run.committed
        raise
    finally:
        run.lock.release()  # (never raises: it cannot hide the run's outcome)


def _record_unchanged(run: TableRun, todo: Work, unchanged: Unchanged) -> RunSummary:
    """A night the no-change check settled (no staging, no Ray, no commit), recorded as the pipeline records a
    night that found nothing changed: committed, no new version, its row in the runs table, the ``[index]``
    section (indexes kept), ``latest-good``. A job's ``[gate]`` is not evaluated: the night made no version, so
    there is nothing new to judge, and ``latest-good`` stays where the gate of the run that made the version left
    it."""
    resolved = run.resolved
    summary = run.summary(
        todo.mode,
        resolved,
        rows_read=unchanged.rows,
        rows_unchanged=unchanged.rows,
        pool=f"none: nothing changed since version {run.read_version} (checked without Ray)",
        seconds_pipeline=unchanged.seconds,
    )
    summary.table_version = run.read_version
    summary.seconds = time.perf_counter() - run.t0
    summary.finished_at = datetime.now(UTC)
    run.committed = summary
    after_commit(
        summary,
        lambda: append_run_record(resolved, summary),
        f"run {run.run_id} made no version (nothing changed), but its record could not be written to the runs "
        f"table ({{error}})",
    )
    for warning in summary.warnings:
        logger.warning(warning)
    todo.after(run, summary)
    if resolved.spec.gate is None:
        mark_good(resolved, summary)
    return summary


def refresh_indexes_after(run: TableRun, summary: RunSummary, *, changed: bool) -> None:
    """The job's ``[index]`` section after a commit; a failure is a warning (the commit counts)."""
    resolved = run.resolved
    if resolved.spec.index is None:
        return
    if run.display is not None:
        run.display.stage(Stage.INDEXES)
    try:
        summary.indexes = refresh_indexes(resolved, changed=changed)
    except Exception as exc:  # committed: an index is bookkeeping too
        summary.warnings.append(
            f"the indexes could not be refreshed ({error_line(exc)}); run `embedjob index {resolved.output_uri} --all`"
        )


def _stage(run: TableRun, mode: str, resume: str | None) -> None:
    """The run's staging folder: the resumable one (named, or the newest that fits), else a new one."""
    resolved = run.resolved
    staging = _resumable(resolved, mode, run.read_version, resume)
    if staging is None:
        staging = RunStaging(resolved.output_uri, run.lock.run_id, resolved.storage_options)
        staging.write_record(
            StagingRecord(
                run_id=staging.run_id,
                status=RunStatus.RUNNING,
                job=run.source_name,
                spec=resolved.spec.model_dump(mode="json"),
                mode=mode,
                read_version=run.read_version,
                provenance=resolved.provenance.to_json(),
                started_at=run.started.isoformat(),
            )
        )
    else:
        run.lock.run_id = staging.run_id
        record = staging.read_record() or StagingRecord(run_id=staging.run_id)
        staging.update_record(status=RunStatus.RUNNING, attempts=record.attempts + 1)
        run.resumed = True
        logger.info("resuming run %s: its staged rows are kept, the rest is embedded now", staging.run_id)
    run.staging = staging
    remember_run(
        staging.run_id, resolved.output_uri, run.source_name, resolved.spec.storage.model_dump(exclude_none=True)
    )


def _resumable(resolved: ResolvedJob, mode: str, read_version: int | None, resume: str | None) -> RunStaging | None:
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
        if record is None or record.status in (RunStatus.COMMITTED, RunStatus.COMMITTING):
            continue
        why = record.resume_problem(read_version, provenance=resolved.provenance.to_json(), mode=mode)
        if why is None:
            return staging
        if resume is not None:
            raise RunNotResumable(f"run {resume} cannot be resumed: {why}; run the job again for a new run")
        if record.read_version != read_version:
            _abandon(resolved, staging, why)
        else:
            logger.info("not resuming run %s: %s", staging.run_id, why)
    return None


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
    record = staging.read_record()
    if record is None or record.status not in (RunStatus.COMMITTING, RunStatus.COMMITTED) or not record.summary:
        return None
    summary = RunSummary.from_json(record.summary)
    summary.table_version = record.table_version
    if record.status == RunStatus.COMMITTED:
        return summary
    version = committed_by(uri, staging.run_id, record.read_version, opts)
    if version is None and updates_rows(summary.mode) and not _changes(summary):
        version = record.read_version  # nothing to commit: it made no version
    if version is None:
        staging.update_record(
            status=RunStatus.FAILED, error="stopped before its commit; nothing was committed", summary=None
        )
        return None
    summary.table_version = version
    staging.update_record(status=RunStatus.COMMITTED, table_version=version)
    return summary


def _landed_anyway(resolved: ResolvedJob, staging: RunStaging, exc: BaseException) -> RunSummary | None:
    """A run that failed while committing (the commit call raised: a timeout, a dropped connection) may still
    have committed: the table's commit message decides. Its summary (bookkeeping finished) when it did."""
    try:
        record = staging.read_record()
        if record is None or record.status != RunStatus.COMMITTING:
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
        lambda: staging.update_record(status=RunStatus.COMMITTED, table_version=summary.table_version),
        f"the staging record of run {run_id} could not be marked committed ({{error}}); the table's commit "
        f"message says it is, and the job's next run finishes its bookkeeping",
    )
    record = (staging.read_record() if ok else None) or StagingRecord(run_id=run_id)
    pending = list(record.pending)
    steps = {
        "tags": lambda: _tag_run(resolved, summary),
        "rejects": lambda: _commit_rejects(resolved, run_id, record.rejects, record.rejects_version),
        "runs": lambda: append_run_record(resolved, summary),
    }
    for step in [s for s in pending if s in steps]:  # (a newer embedjob's step: left for it)
        what = _STEP_WHAT[step]
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
    record_run(resolved.output_uri, summary, resolved.storage_options)


def _tag_run(resolved: ResolvedJob, summary: RunSummary) -> None:
    """The run's tag (its id) on the version it made, once; a run that made no version (nothing changed) has
    none."""
    version = summary.table_version
    if version is None or version == summary.read_version:
        return
    tag = tag_run(resolved.output_uri, summary.run_id, version, resolved.storage_options)
    if tag not in summary.tags:
        summary.tags.append(tag)


def check_gate(resolved: ResolvedJob, summary: RunSummary) -> None:
    """The job's ``[gate]`` on the version the run committed, into ``summary.gate``; below the floor (or not
    evaluable) the run's ``error`` says so (its runs-table row keeps it) and it does not pass its checks."""
    gate = resolved.spec.gate
    if gate is None or summary.table_version is None:
        return
    try:
        summary.gate = evaluate_gate(gate, resolved.output_uri, summary.table_version, resolved.storage_options)
    except Exception as exc:  # committed: a gate that cannot say the run is good says it is not
        summary.gate = {"passed": False, "floor": gate.floor, "error": error_line(exc)}
    if not summary.gate["passed"]:
        summary.error = gate_line(summary.gate)
        logger.warning("run %s: %s", summary.run_id, summary.error)


def mark_good(resolved: ResolvedJob, summary: RunSummary) -> None:
    """After all of a run's work: ``latest-good`` moves to its version when it passed its checks
    (:attr:`RunSummary.passed_checks`). A run whose bookkeeping a later run finished (its driver died) does not
    move it: its checks never ran to the end."""
    if not summary.passed_checks:
        return
    # a migration step that finished the migration: the switched table is the one that passed
    version = (summary.migration or {}).get("switched") or summary.table_version
    assert version is not None

    def move() -> None:
        if move_latest_good(resolved.output_uri, version, resolved.storage_options) == version:
            summary.tags.append(LATEST_GOOD)

    after_commit(
        summary,
        move,
        f"the tag {LATEST_GOOD} could not be moved to version {version} ({{error}}); it names an older version "
        f"until a later run that passes its checks moves it",
    )


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


def _record_failure(run: TableRun, exc: BaseException) -> None:
    """Best effort (the store may be what failed): the staging record and the runs table say it failed, with
    the counts the run got to (a guard's refusal carries them)."""
    assert run.staging is not None
    error = f"{type(exc).__name__}: {exc}"
    try:
        run.staging.update_record(
            status=RunStatus.FAILED, error=error, failed_at=datetime.now(UTC).isoformat(), summary=None
        )
        _record_unfinished(
            run.resolved,
            run.staging,
            "failed",
            error,
            run.started,
            time.perf_counter() - run.t0,
            run.source_name,
            getattr(exc, "run_fields", None) or {},
        )
    except Exception as inner:
        logger.warning("could not record the failure of run %s: %s", run.staging.run_id, inner)


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
    record = staging.read_record() or StagingRecord(run_id=staging.run_id)
    summary = RunSummary(
        run_id=staging.run_id,
        job_name=resolved.spec.name or Path(str(record.job or source_name)).stem,
        table_uri=resolved.output_uri,
        mode=str(record.mode or ""),
        status=status,
        table_version=None,
        seconds=seconds,
        started_at=started,
        finished_at=datetime.now(UTC),
        read_version=record.read_version,
        error=error[:2000],
        **(counts or {}),
    )
    append_rows(resolved.runs_uri, summary.row(), storage_options=resolved.storage_options)


def _abandon(resolved: ResolvedJob, staging: RunStaging, why: str) -> None:
    """A run that can never be resumed (the table moved past the version it read): record it and remove
    its staging folder. Its fragment files are orphans that ``embedjob gc`` removes."""
    record = staging.read_record() or StagingRecord(run_id=staging.run_id)
    try:
        started = datetime.fromisoformat(str(record.started_at))
    except ValueError:
        started = datetime.now(UTC)
    try:
        _record_unfinished(resolved, staging, "abandoned", f"not resumable: {why}", started, 0.0, "job")
        staging.remove()
        logger.info("run %s abandoned (%s); its staging folder was removed", staging.run_id, why)
    except Exception as exc:  # gc will get it
        logger.warning("could not clean up abandoned run %s: %s", staging.run_id, exc)
