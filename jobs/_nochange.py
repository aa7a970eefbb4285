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

Any run with no cluster named (create, overwrite, append, incremental) also runs in this process, whatever its
size, where the embedded Ray would plan its pool as one CPU actor (``cluster.one_encoder_here``: up to
``MAX_THREADS_PER_CPU_ACTOR`` CPUs, no GPU): that actor is this process's encoder on the same cores, and Ray
would add its start-up only. A create, overwrite or append run with fewer input rows than ``in_process_below``
(the input's own count: parquet footers, Lance) runs here too. ``in_process_below = 0`` keeps every run on Ray.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cluster import ClusterError, PoolRequest, check_rows, one_encoder_here
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
    """What the check found: the run embeds in this process, without Ray. Either at most ``rows`` rows to embed
    (new and changed; a chunked table's documents), fewer than ``below`` (``[cluster] in_process_below``), or
    ``one_encoder``: the embedded Ray's pool would be one CPU actor, the encoder this process runs (its words;
    ``rows``: the input's rows where counted, else None)."""

    rows: int | None
    below: int
    seconds: float
    one_encoder: str | None = None

    def describe(self) -> str:
        """The run record's ``pool`` (no square brackets: the CLI's table would take them for markup)."""
        if self.one_encoder is not None:
            counted = "" if self.rows is None else f"{self.rows:,} input row(s); "
            return f"in-process: {counted}{self.one_encoder}, the encoder this process runs; no Ray"
        what = "the break-even, " if self.below == IN_PROCESS_BELOW else ""
        below = f"{what}cluster.in_process_below = {self.below:,}"
        return f"in-process: {self.rows or 0:,} row(s) to embed (below {below}); no Ray"


@dataclass(frozen=True)
class _Here:
    """Whether a run may embed in this process: ``below`` (``[cluster] in_process_below``; 0: never) and, when
    the embedded Ray's pool would be one CPU actor, ``one_encoder`` (its words)."""

    below: int = 0
    one_encoder: str | None = None


def unchanged_since(resolved: ResolvedJob, mode: str, read_version: int | None, resume: str | None) -> Unchanged | None:
    """Whether the run has nothing to do at all, decided without Ray; None: the run goes on (:func:`before_ray`,
    asked only that: it stops at the first difference)."""
    night = before_ray(resolved, mode, read_version, resume, without_ray=False)
    return night if isinstance(night, Unchanged) else None


def before_ray(
    resolved: ResolvedJob, mode: str, read_version: int | None, resume: str | None, *, without_ray: bool
) -> Unchanged | InProcess | None:
    """What the run needs, decided without Ray: nothing (:class:`Unchanged`), its rows embedded in this process
    (:class:`InProcess`), or None: the Ray pipeline, as before.

    Never asked of a migration step or a run with a calibration to fit: those run on Ray. Nothing to do (an
    incremental run on an existing table only) means: a new run (not a resume, and no staged run of the table
    to finish or resume), every input row would be embedded (no reject), no id twice, every id in the table with
    the same content hash, and with ``delete_missing`` every table id in the input. In this process means:
    ``without_ray`` (the caller says whether this process holds no Ray session of its own: one a notebook or a
    test opened is used as is), no cluster given (no ``[cluster] address``, no RAY_ADDRESS: a job on a cluster
    always uses its pool), ``in_process_below`` not 0, and either the embedded Ray's pool would be one CPU actor
    (``cluster.one_encoder_here``), or fewer rows to embed than ``in_process_below``: a night's new and changed
    rows (counted as if nothing was staged: a resume embeds fewer), another run's input rows (its footers'
    count). An input that cannot be read here leaves the decision to the pipeline (which names the bad file).
    """
    why_not = _not_asked(resolved, mode)
    if why_not is not None:
        logger.debug("no-change check skipped, and no run in this process: %s", why_not)
        return None
    here = _here(resolved) if without_ray else _Here()
    if mode != _MODE or read_version is None:
        return _whole_input(resolved, here)
    not_quiet = _why_not_quiet(resolved, resume)
    quiet_ok = not_quiet is None
    if not quiet_ok and not here.below:
        logger.debug("no-change check skipped: %s, and no night runs in this process", not_quiet)
        return None
    t0 = time.perf_counter()
    try:
        diff = _compare(resolved, read_version, here.below)
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
    # (the pass stops once in_process_below rows to embed were seen: above, the count is not the night's)
    return _in_process(here, diff.to_embed, "row(s) to embed", seconds, whole=False)


def _not_asked(resolved: ResolvedJob, mode: str) -> str | None:
    """Why the run always goes to Ray (None: it may not need to): a migration step, or a calibration to fit."""
    if resolved.migration is not None or mode == "migrate":
        return f"mode {mode}"
    if resolved.calibration_pending:
        return "a calibration is fitted first"
    return None


def _whole_input(resolved: ResolvedJob, here: _Here) -> InProcess | None:
    """A run that embeds its whole input (create, overwrite, append, or no table yet): in this process where the
    pool would be one encoder, or the input counts (cheaply: its footers) fewer rows than ``in_process_below``."""
    if not here.below:
        return None
    return _in_process(here, resolved.source.row_count(), "input row(s)", 0.0, whole=True)


def _in_process(here: _Here, rows: int | None, what: str, seconds: float, *, whole: bool) -> InProcess | None:
    """In this process when ``rows`` (``what``: rows to embed, or the input's; None: not counted) are below
    ``in_process_below``, else when the pool would be one encoder (``whole``: ``rows`` is the whole count, for
    the record); None: on Ray."""
    if rows is not None and rows < here.below:
        logger.info(
            "%d %s, below cluster.in_process_below = %d: embedding in this process, without Ray",
            rows,
            what,
            here.below,
        )
        return InProcess(rows=rows, below=here.below, seconds=seconds)
    if here.one_encoder:
        logger.info("embedding in this process, without Ray: %s", here.one_encoder)
        return InProcess(rows=rows if whole else None, below=here.below, seconds=seconds, one_encoder=here.one_encoder)
    return None


def _why_not_quiet(resolved: ResolvedJob, resume: str | None) -> str | None:
    """Why the run cannot be a night with nothing to do, whatever the input holds (None: it can)."""
    if resume is not None:
        return f"resuming run {resume}"
    if staged_runs(resolved.output_uri, resolved.storage_options):
        return "an earlier run's staging folder is there (the run finishes or resumes it)"
    return None


def _here(resolved: ResolvedJob) -> _Here:
    """Whether this run may embed in this process: never when the job names a cluster (``[cluster] address``,
    RAY_ADDRESS) or sets ``in_process_below = 0``; else below that many rows, and at any size where the embedded
    Ray's pool would be one encoder."""
    cluster = resolved.spec.cluster
    if cluster.address or os.environ.get("RAY_ADDRESS") or not cluster.in_process_below:
        return _Here()
    request = PoolRequest(
        actors=cluster.actors, gpus_per_actor=cluster.gpus_per_actor, cpus_per_actor=cluster.cpus_per_actor
    )
    try:
        one_encoder = one_encoder_here(request)
    except ClusterError as exc:  # the pool's planning meets it too and fails the run with this message
        logger.debug("no run in this process: %s", exc)
        return _Here()
    return _Here(below=cluster.in_process_below, one_encoder=one_encoder)


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
