"""A night with nothing changed, or with little changed, found without Ray: the input's ids and hashes against the
table's.

An incremental run whose input holds the table's ids with the table's content hashes has nothing to embed,
delete or reject. The pipeline finds that out only at its end, after starting Ray and loading the model in its
actors. :func:`unchanged_since` finds it out in the driver, under the table's lock and before any staging: it
streams the input's id and text columns with the source's own reader (local or S3), judges each row with the
pipeline's own rule (:func:`cluster.check_rows`), and compares its content hash with the table's at the version
read (a chunked table's by document). It stops at the first difference, so a night with changes pays little for
asking, and then runs as before.

The same pass counts the rows to embed (new and changed) up to ``[cluster] in_process_below``: a night with fewer,
and no cluster named, embeds them in this process without Ray (``cluster.run_in_process``), where starting Ray and
its actor pool would cost more than the rows. Then the pass stops once it has seen that many rows to embed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cluster import check_rows
from storage import CONTENT_HASH, DOC_ID, ID, error_line, read_hashes, staged_runs

from ._checks import ResolvedJob
from ._spec import IN_PROCESS_BELOW

__all__ = ["InProcess", "Unchanged", "before_ray", "unchanged_since"]

logger = logging.getLogger("embedjob")

#: the one mode the check answers for: a migration step re-embeds old rows, the others add or replace rows
_MODE = "incremental"


@dataclass(frozen=True)
class Unchanged:
    """What the check found: every one of the input's ``rows`` (a chunked table's documents) is in the table
    with the same text, and nothing else is to be done; ``seconds`` it took."""

    rows: int
    seconds: float


@dataclass(frozen=True)
class InProcess:
    """What the check found: at most ``rows`` rows to embed (new and changed; a chunked table's documents), fewer
    than ``below`` (``[cluster] in_process_below``): the night runs in this process, without Ray."""

    rows: int
    below: int
    seconds: float

    def describe(self) -> str:
        """The run record's ``pool`` (no square brackets: the CLI's table would take them for markup)."""
        what = "the break-even, " if self.below == IN_PROCESS_BELOW else ""
        below = f"{what}cluster.in_process_below = {self.below:,}"
        return f"in-process: {self.rows:,} row(s) to embed (below {below}); no Ray"


def unchanged_since(resolved: ResolvedJob, mode: str, read_version: int | None, resume: str | None) -> Unchanged | None:
    """Whether the run has nothing to do at all, decided without Ray; None: the run goes on (:func:`before_ray`,
    asked only that: it stops at the first difference)."""
    night = before_ray(resolved, mode, read_version, resume, without_ray=False)
    return night if isinstance(night, Unchanged) else None


def before_ray(
    resolved: ResolvedJob, mode: str, read_version: int | None, resume: str | None, *, without_ray: bool
) -> Unchanged | InProcess | None:
    """What the night needs, decided without Ray: nothing (:class:`Unchanged`), few rows embedded in this process
    (:class:`InProcess`), or None: the Ray pipeline, as before.

    Asked only of an incremental run (not a migration step) on an existing table with no calibration to fit.
    Nothing to do means: a new run (not a resume, and no staged run of the table to finish or resume), every
    input row would be embedded (no reject), no id twice, every id in the table with the same content hash, and
    with ``delete_missing`` every table id in the input. In this process means: ``without_ray`` (the caller says
    whether this process holds no Ray session of its own: one a notebook or a test opened is used as is), no
    cluster given (no ``[cluster] address``, no RAY_ADDRESS: a job on a cluster always uses its pool), and fewer
    new and changed rows than ``[cluster] in_process_below`` (counted as if nothing was staged: a resume embeds
    fewer). An input that cannot be read here leaves the decision to the pipeline (which names the bad file).
    """
    why_not = _not_asked(resolved, mode, read_version)
    not_quiet = _why_not_quiet(resolved, resume) if why_not is None else None
    quiet_ok = not_quiet is None
    below = _in_process_below(resolved) if without_ray else 0
    if why_not is None and not quiet_ok and not below:
        why_not = f"{not_quiet}, and no night runs in this process"
    if why_not is not None:
        logger.debug("no-change check skipped: %s", why_not)
        return None
    assert read_version is not None
    t0 = time.perf_counter()
    try:
        diff = _compare(resolved, read_version, below)
    except Exception as exc:  # an optimisation only: the pipeline meets the same input and reports it
        logger.info("no-change check: could not compare (%s); the run goes on", error_line(exc))
        return None
    seconds = time.perf_counter() - t0
    if diff.difference is None and quiet_ok:
        logger.info(
            "nothing changed since version %d (%d rows compared in %.1f s): no Ray started",
            read_version,
            diff.rows,
            seconds,
        )
        return Unchanged(rows=diff.rows, seconds=seconds)
    if diff.difference is not None:
        logger.info("the input differs from version %d (%s): embedding what changed", read_version, diff.difference)
    if diff.to_embed < below:
        logger.info(
            "%d row(s) to embed, below cluster.in_process_below = %d: embedding in this process, without Ray",
            diff.to_embed,
            below,
        )
        return InProcess(rows=diff.to_embed, below=below, seconds=seconds)
    return None


def _not_asked(resolved: ResolvedJob, mode: str, read_version: int | None) -> str | None:
    """Why the check does not apply to this run (None: it does)."""
    if mode != _MODE or resolved.migration is not None:
        return f"mode {mode}"
    if read_version is None:
        return "no table yet"
    if resolved.calibration_pending:
        return "a calibration is fitted first"
    return None


def _why_not_quiet(resolved: ResolvedJob, resume: str | None) -> str | None:
    """Why the run cannot be a night with nothing to do, whatever the input holds (None: it can)."""
    if resume is not None:
        return f"resuming run {resume}"
    if staged_runs(resolved.output_uri, resolved.storage_options):
        return "an earlier run's staging folder is there (the run finishes or resumes it)"
    return None


def _in_process_below(resolved: ResolvedJob) -> int:
    """``[cluster] in_process_below``, or 0 (never in this process) when the job names a cluster."""
    if resolved.spec.cluster.address or os.environ.get("RAY_ADDRESS"):
        return 0
    return resolved.spec.cluster.in_process_below


@dataclass(frozen=True)
class _Diff:
    """The input against the table: the first thing that makes the night do something (None: nothing does), the
    valid distinct input rows read, and the new and changed ones among them."""

    difference: str | None
    rows: int
    to_embed: int


def _compare(resolved: ResolvedJob, version: int, below: int) -> _Diff:
    """The input's rows against the table's at ``version``; stops once there is a difference and ``below`` rows to
    embed were seen (with ``below`` 0: at the first difference), when the answer cannot change any more."""
    table = _table_hashes(resolved, version)
    seen: set[Any] = set()
    difference: str | None = None
    to_embed = 0
    for id_value, content, reason in _input_rows(resolved):
        if reason is not None:
            difference = difference or f"a row would be rejected: {reason}"
        elif id_value in seen:
            difference = difference or f"id {id_value!r} is there twice"
        else:
            seen.add(id_value)
            old = table.get(id_value)
            if old != content:
                to_embed += 1
                difference = difference or f"id {id_value!r} is {'new' if old is None else 'changed'}"
        if difference is not None and to_embed >= below:
            return _Diff(difference, len(seen), to_embed)
    if not seen:
        return _Diff(difference or "the input has no rows", 0, to_embed)  # the deletion guard's to judge
    if difference is None and resolved.spec.output.delete_missing and len(seen) < len(table):
        difference = f"{len(table) - len(seen)} id(s) left the input"
    return _Diff(difference, len(seen), to_embed)


def _table_hashes(resolved: ResolvedJob, version: int) -> dict[Any, str]:
    """The table's id -> content hash at ``version``; a chunked table's document id -> its documents' hash."""
    table = read_hashes(resolved.output_uri, version, resolved.storage_options)
    key = DOC_ID if DOC_ID in table.column_names else ID
    return dict(zip(table.column(key).to_pylist(), table.column(CONTENT_HASH).to_pylist(), strict=True))


def _input_rows(resolved: ResolvedJob) -> Iterator[tuple[Any, str | None, str | None]]:
    """Each input row's id, content hash and reason to reject it (None: valid), batch by batch: the source's
    reader, the pipeline's rule."""
    id_col, text_col = resolved.spec.input.id_column, resolved.spec.input.text_column
    for batch in resolved.source.batches([id_col, text_col]):
        ids = batch.column(id_col).to_pylist()
        _, hashes, reasons = check_rows(batch.column(text_col).to_pylist(), ids)
        yield from zip(ids, hashes, reasons, strict=True)
