"""A night with nothing changed, found without Ray: the input's ids and hashes against the table's.

An incremental run whose input holds the table's ids with the table's content hashes has nothing to embed,
delete or reject. The pipeline finds that out only at its end, after starting Ray and loading the model in its
actors. :func:`unchanged_since` finds it out in the driver, under the table's lock and before any staging: it
streams the input's id and text columns with the source's own reader (local or S3), judges each row with the
pipeline's own rule (:func:`cluster.check_rows`), and compares its content hash with the table's at the version
read (a chunked table's by document). It stops at the first difference, so a night with changes pays little for
asking, and then runs as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cluster import check_rows
from storage import CONTENT_HASH, DOC_ID, ID, error_line, read_hashes, staged_runs

from ._checks import ResolvedJob

__all__ = ["Unchanged", "unchanged_since"]

logger = logging.getLogger("embedjob")

#: the one mode the check answers for: a migration step re-embeds old rows, the others add or replace rows
_MODE = "incremental"


@dataclass(frozen=True)
class Unchanged:
    """What the check found: every one of the input's ``rows`` (a chunked table's documents) is in the table
    with the same text, and nothing else is to be done; ``seconds`` it took."""

    rows: int
    seconds: float


def unchanged_since(resolved: ResolvedJob, mode: str, read_version: int | None, resume: str | None) -> Unchanged | None:
    """Whether the run has nothing to do at all, decided without Ray; None: the run goes on as before.

    Asked only of a new incremental run (not a migration step, not a resume) on an existing table with no
    staged run to finish or resume and no calibration to fit. Nothing to do means: every input row would be
    embedded (no reject), no id twice, every id in the table with the same content hash, and with
    ``delete_missing`` every table id in the input. An input that cannot be read here leaves the decision to
    the pipeline (which names the bad file).
    """
    why_not = _not_asked(resolved, mode, read_version, resume)
    if why_not is not None:
        logger.debug("no-change check skipped: %s", why_not)
        return None
    assert read_version is not None
    t0 = time.perf_counter()
    try:
        difference, rows = _first_difference(resolved, read_version)
    except Exception as exc:  # an optimisation only: the pipeline meets the same input and reports it
        logger.info("no-change check: could not compare (%s); the run goes on", error_line(exc))
        return None
    if difference is not None:
        logger.info("the input differs from version %d (%s): embedding what changed", read_version, difference)
        return None
    seconds = time.perf_counter() - t0
    logger.info(
        "nothing changed since version %d (%d rows compared in %.1f s): no Ray started", read_version, rows, seconds
    )
    return Unchanged(rows=rows, seconds=seconds)


def _not_asked(resolved: ResolvedJob, mode: str, read_version: int | None, resume: str | None) -> str | None:
    """Why the check does not apply to this run (None: it does)."""
    if mode != _MODE or resolved.migration is not None:
        return f"mode {mode}"
    if read_version is None or resume is not None:
        return "no table yet" if read_version is None else f"resuming run {resume}"
    if resolved.calibration_pending:
        return "a calibration is fitted first"
    if staged_runs(resolved.output_uri, resolved.storage_options):
        return "an earlier run's staging folder is there (the run finishes or resumes it)"
    return None


def _first_difference(resolved: ResolvedJob, version: int) -> tuple[str | None, int]:
    """The first thing that makes the night do something (None: nothing does), and the input rows read."""
    spec = resolved.spec
    table = _table_hashes(resolved, version)
    seen: set[Any] = set()
    for id_value, content, reason in _input_rows(resolved):
        if reason is not None:
            return f"a row would be rejected: {reason}", len(seen)
        if id_value in seen:
            return f"id {id_value!r} is there twice", len(seen)
        old = table.get(id_value)
        if old != content:
            return f"id {id_value!r} is {'new' if old is None else 'changed'}", len(seen)
        seen.add(id_value)
    if not seen:
        return "the input has no rows", 0  # the deletion guard's to judge
    if spec.output.delete_missing and len(seen) < len(table):
        return f"{len(table) - len(seen)} id(s) left the input", len(seen)
    return None, len(seen)


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
