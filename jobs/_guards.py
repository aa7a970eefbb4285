"""What a run may not commit without being told: too many rejected rows, too many deleted rows, an empty table.

Each guard runs after the pipeline and before the commit; a refused run leaves
the table untouched, is recorded ``failed`` with its counts, and its message
says exactly how to allow it. Its staged rows are kept, so allowing it (the
same job with ``--allow-deletes``) commits them without embedding them again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from storage.vocab import replaces_table, updates_rows

__all__ = ["DeletionRefused", "RejectLimitExceeded", "check_deletions", "check_rejects"]


class RunRefused(RuntimeError):
    """A guard refused the commit; ``run_fields`` are the counts for the run's failure record."""

    run_fields: dict[str, Any]


class RejectLimitExceeded(RunRefused):
    """More rows were rejected than ``output.max_reject_fraction`` allows; nothing was committed."""

    def __init__(self, rejected: int, read: int, limit: float, reasons: dict[str, int]) -> None:
        self.rejected, self.read, self.limit, self.reasons = rejected, read, limit, dict(reasons)
        self.run_fields = {"rows_read": read, "rows_rejected": rejected, "reject_reasons": dict(reasons)}
        top = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        super().__init__(
            f"{rejected} of {read} rows rejected ({rejected / max(read, 1):.2%}), above "
            f"output.max_reject_fraction = {limit:g}; nothing was committed. Reasons: {top}"
        )

    def __reduce__(self):
        return (type(self), (self.rejected, self.read, self.limit, self.reasons))


class DeletionRefused(RunRefused):
    """The run would delete more of the table than ``output.max_delete_fraction`` allows, or make an empty
    table the job did not allow; nothing was committed."""

    def __init__(self, message: str, run_fields: Mapping[str, Any]) -> None:
        self.run_fields = dict(run_fields)
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self), self.run_fields))


def check_rejects(rows_read: int, rows_rejected: int, reasons: Mapping[str, int], limit: float) -> None:
    """Refuse when more than ``limit`` of the rows read were rejected."""
    if rows_read and rows_rejected / rows_read > limit:
        raise RejectLimitExceeded(rows_rejected, rows_read, limit, dict(reasons))


def check_deletions(
    *,
    mode: str,
    job: str,
    table_uri: str,
    read_version: int | None,
    table_rows: int,
    rows_read: int,
    would_delete: int,
    max_delete_fraction: float,
    allow_empty: bool,
    allow_deletes: bool,
    run_fields: Mapping[str, Any],
) -> None:
    """The deletion guard, one rule for every run that commits.

    - incremental: refuse deleting more than ``max_delete_fraction`` of the table's ``table_rows`` rows
      (ids gone from the input; an empty input means every row), unless ``allow_deletes``;
    - create / overwrite: refuse an input with no rows unless the job says ``allow_empty = true``
      (an overwrite would empty the table, a create would make an empty one).
    """
    fields = {**run_fields, "rows_read": rows_read, "rows_deleted": would_delete}
    if updates_rows(mode):
        if allow_deletes or not table_rows or not would_delete or would_delete / table_rows <= max_delete_fraction:
            return
        why = (
            "the input has no rows (an empty export?)"
            if rows_read == 0
            else f"their ids are not in the input ({rows_read:,} rows read)"
        )
        raise DeletionRefused(
            f"this run would delete {would_delete:,} of the {table_rows:,} rows of {table_uri!r} "
            f"({would_delete / table_rows:.0%}), more than output.max_delete_fraction = {max_delete_fraction:g} "
            f"allows: {why}. Nothing was committed; the table stays at version {read_version}. If the input is "
            f"right, allow it once with `embedjob run {job} --allow-deletes` (rows this run embedded are kept, "
            f"not embedded again), or raise [output] max_delete_fraction; [output] delete_missing = false keeps "
            f"rows whose ids left the input",
            fields,
        )
    if replaces_table(mode) and rows_read == 0 and not allow_empty:
        what = (
            f"would replace the {table_rows:,} rows of {table_uri!r} with none"
            if mode == "overwrite" and table_rows
            else f"would make {table_uri!r} an empty table"
        )
        raise DeletionRefused(
            f"the input has no rows: this {mode} run {what}. Nothing was committed. If an empty table is "
            f"intended, set [output] allow_empty = true in the job",
            fields,
        )
