"""The steps of a staged migration around a run, and the table-level commands: status and abort.

A run with ``mode = "migrate"`` on a table whose settings differ from the job's (:class:`MigrationPlan`):

1. :func:`begin_step` (the first step only, before anything is staged): the table gets its ``next_vec_*``
   columns, null, and the migration's record (``storage.begin_migration``);
2. the run itself (``jobs._run``): new and changed rows embedded both ways, and a slice of the old rows
   (``[migrate] max_rows_per_run`` / ``budget``) too, one commit like any incremental run;
3. :func:`finish_step`: when every row has the new vectors, the switch (``storage.switch_migration``).

:func:`abort_migration_of` undoes a migration in one commit; :func:`migration_status` is what ``inspect`` shows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cluster import NextEncoder
from storage import (
    MigrationError,
    MigrationState,
    Provenance,
    RunRecord,
    TableLock,
    abort_migration,
    begin_migration,
    calibration_uri,
    commit_message,
    count_rows,
    dataset_version,
    error_line,
    migrated_rows,
    new_run_id,
    read_migration,
    read_provenance,
    read_rows,
    record_run,
    sibling_uri,
    switch_migration,
    tag_run,
)

from ._checks import ResolvedJob
from ._gate import evaluate_gate, gate_line
from ._lifecycle import TableRun, after_commit
from ._migration import migration_schema
from ._summary import RunSummary

__all__ = ["AbortReport", "MigrationStatus", "abort_migration_of", "begin_step", "finish_step", "migration_status"]

logger = logging.getLogger("embedjob")

#: how many recent migration steps the pace (rows per run) is taken from
PACE_RUNS = 3


def begin_step(run: TableRun, resolved: ResolvedJob) -> None:
    """The migration's first step: its columns and record, committed before anything is staged; the run then
    reads (and later commits against) that version. A later step, or a resumed first one, finds it begun."""
    migration = resolved.migration
    assert migration is not None and run.staging is not None and run.read_version is not None
    uri, opts = resolved.output_uri, resolved.storage_options
    if read_migration(uri, run.read_version, opts) is not None:
        return
    state = MigrationState(
        to=resolved.provenance,
        started_by=run.run_id,
        started_at=datetime.now(UTC).isoformat(),
        rows_at_start=count_rows(uri, run.read_version, opts),
        keep_old=migration.options.keep_old_columns,
    )
    run.lock.check()
    version = begin_migration(
        uri, state, read_version=run.read_version, storage_options=opts, message=f"migration begins: run {run.run_id}"
    )
    logger.info(
        "run %s begins a migration of %s (%s): version %d", run.run_id, uri, migration.describe(state.to), version
    )
    run.read_version = version
    run.staging.update_record(read_version=version)


def migration_plan_fields(resolved: ResolvedJob, read_version: int | None) -> dict[str, Any]:
    """What a migration step's :class:`cluster.EmbedPlan` holds instead of the job's encoder: the old settings
    (``vec_*``), the new ones as the second encoder (``next_vec_*``), the rows' schema, and the slice. The old
    rows it takes have their old vectors read back from the table at ``read_version``, not embedded again."""
    migration = resolved.migration
    assert migration is not None
    old, new, spec = migration.old, resolved.provenance, resolved.spec
    cal = resolved.calibration
    return {
        "model_path": old.model_path,
        "encoder": migration.old_encoder,
        "calibration_uri": migration.old_calibration_uri,
        "vector_dtype": old.vector_dtype,
        "schema": migration_schema(resolved.schema, old, new),
        "next_encoder": NextEncoder(
            model_path=new.model_path,
            encoder=resolved.encoder,
            vector_dtype=spec.output.vector_dtype,
            calibration_uri=calibration_uri(resolved.output_uri, cal.fingerprint) if cal else None,
            table_uri=resolved.output_uri,
            read_version=read_version,
        ),
        "slice_rows": migration.options.max_rows_per_run,
        "slice_s": migration.options.budget_s,
    }


def finish_step(run: TableRun, resolved: ResolvedJob, summary: RunSummary) -> bool:
    """After a step's commit: its progress into ``summary.migration``, and the switch when every row has the
    new vectors (then the job's ``[gate]`` is evaluated on the switched table). True when it switched. A
    failure is a warning: the next step (or ``embedjob run --migrate`` again) switches."""
    uri, opts = resolved.output_uri, resolved.storage_options
    version = summary.table_version
    assert version is not None and resolved.migration is not None
    state = read_migration(uri, version, opts)
    if state is None:
        return False
    done, total = migrated_rows(uri, version, state, opts)
    summary.migration = {"to": resolved.migration.describe(state.to), "done": done, "total": total}
    if done < total:
        return False
    switched: list[int] = []

    def switch() -> None:
        run.lock.check()
        message = commit_message(run.run_id) + " (switch)"
        switched.append(switch_migration(uri, read_version=version, storage_options=opts, message=message))

    after_commit(
        summary,
        switch,
        "every row has the new vectors, but the switch to them failed ({error}); the next `embedjob run --migrate` "
        "of this job switches",
    )
    if not switched:
        return False
    summary.migration["switched"] = switched[0]
    logger.info("run %s: migration of %s complete; version %d has the new settings", run.run_id, uri, switched[0])
    _gate_switch(resolved, summary, switched[0])
    return True


def _gate_switch(resolved: ResolvedJob, summary: RunSummary, version: int) -> None:
    """The job's gate on the switched table (its new vectors): below the floor, ``latest-good`` stays before it."""
    gate = resolved.spec.gate
    if gate is None:
        return
    try:
        summary.gate = evaluate_gate(gate, resolved.output_uri, version, resolved.storage_options)
    except Exception as exc:
        summary.gate = {"passed": False, "floor": gate.floor, "error": error_line(exc)}
    if not summary.gate["passed"]:
        summary.error = f"after the switch: {gate_line(summary.gate)}"
        logger.warning("run %s: %s", summary.run_id, summary.error)


@dataclass(frozen=True)
class MigrationStatus:
    """A migration in progress, for people: what changes, rows done of the total, and the pace."""

    to: Provenance
    changes: str
    started_by: str
    started_at: str
    done: int
    total: int
    #: rows migrated per step over the last steps (None: no step recorded yet)
    pace: float | None
    steps: int

    @property
    def nights_left(self) -> int | None:
        """Steps left at the recent pace (None: no pace yet)."""
        if self.done >= self.total:
            return 0
        if not self.pace:
            return None
        return math.ceil((self.total - self.done) / self.pace)


def migration_status(uri: str, storage_options: dict[str, str] | None = None) -> MigrationStatus | None:
    """The table's migration in progress (None: none): rows done of the total at its latest version, and the
    recent pace from the runs table (old rows taken per committed ``migrate`` step)."""
    version = dataset_version(uri, storage_options)
    state = read_migration(uri, version, storage_options)
    if state is None:
        return None
    old = read_provenance(uri, storage_options)
    done, total = migrated_rows(uri, version, state, storage_options)
    rows = read_rows(sibling_uri(uri, "runs"), storage_options=storage_options)
    steps = [
        r for r in rows if r.get("mode") == "migrate" and r.get("status") == "committed" and _after(r, state.started_at)
    ]
    recent = steps[-PACE_RUNS:]
    pace = sum(int(r.get("rows_migrated") or 0) for r in recent) / len(recent) if recent else None
    return MigrationStatus(
        to=state.to,
        changes="; ".join(old.differences(state.to)) if old else "",
        started_by=state.started_by,
        started_at=state.started_at,
        done=done,
        total=total,
        pace=pace,
        steps=len(steps),
    )


def _after(row: dict[str, Any], started_at: str) -> bool:
    """A runs-table row of a run that started after the migration began (the first step's too: its record
    names the time its begin was committed, later than the run started)."""
    when = row.get("finished_at")
    return when is not None and when.isoformat() >= started_at


@dataclass(frozen=True)
class AbortReport:
    table_uri: str
    run_id: str
    version: int
    from_version: int
    done: int
    total: int
    warnings: tuple[str, ...] = ()


def abort_migration_of(uri: str, *, storage_options: dict[str, str] | None = None, wait_s: float = 0.0) -> AbortReport:
    """Undo the table's migration in one commit under its lock: the new columns and the record go, every row
    keeps its old vectors. Recorded in the runs table (mode ``migrate abort``) and tagged; ``latest-good`` is
    not moved (the contents the runs made are not changed)."""
    run_id = new_run_id()
    lock = TableLock(uri, run_id=run_id, storage_options=storage_options)
    lock.acquire(wait_s=wait_s)
    try:
        started = datetime.now(UTC)
        current = dataset_version(uri, storage_options)
        state = read_migration(uri, current, storage_options)
        if state is None:
            raise MigrationError(f"table {uri!r} has no migration in progress; nothing to abort")
        done, total = migrated_rows(uri, current, state, storage_options)
        lock.check()
        version = abort_migration(
            uri, read_version=current, storage_options=storage_options, message=commit_message(run_id)
        )
        warnings = []
        try:
            tag_run(uri, run_id, version, storage_options)
            record_run(
                uri,
                RunRecord(
                    run_id=run_id,
                    job_name="migrate abort",
                    table_uri=uri,
                    mode="migrate abort",
                    status="committed",
                    table_version=version,
                    started_at=started,
                    finished_at=datetime.now(UTC),
                    read_version=current,
                ),
                storage_options,
            )
        except Exception as exc:  # committed: it stands
            warnings.append(f"the abort committed version {version}, but its record could not be written ({exc})")
        return AbortReport(uri, run_id, version, current, done, total, tuple(warnings))
    finally:
        lock.release()
