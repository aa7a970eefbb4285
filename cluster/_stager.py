"""Staging a run's rows, without Ray: uncommitted Lance fragments and a part per slice in the run's staging folder.

:class:`RunStager` writes the embedded rows as uncommitted Lance fragments (in the table's data folder) and the
rejected rows as fragments of the rejects table, and records each slice of at most ``rows_per_part`` rows as a
part in the run's staging folder; each slice reports its rows and rejected rows by reason, never vectors.
:meth:`RunStager.finish` reads the run's parts (an earlier attempt's too, for a resumed run) for the one commit the
job layer makes. The pipeline's Ray Data sink (``_sink.StagingSink``) is this stager run by Ray's write tasks; a
small night embedded in this process (``_inprocess``) calls it directly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from storage import CONTENT_HASH, DOC_ID, ID, REJECTS_SCHEMA, RUN_ID, TEXT, RunStaging, StagedPart, write_fragments

from ._stages import NODE, REASON, TOKENS, TRUNCATED

__all__ = ["RunStager", "StagedWrite"]


@dataclass(frozen=True)
class StagedWrite:
    """What one staged slice reports to the driver."""

    rows: int
    rejected: int
    reasons: dict[str, int] = field(default_factory=dict)
    reject_fragments: list[str] = field(default_factory=list)


class RunStager:
    """Stages a run's encoded rows (``EncodeActor``'s output) in its staging folder; commits nothing.

    After :meth:`finish`, ``parts`` holds every part the run has staged (the commit's input) and ``writes``
    this attempt's reports (its rejected rows: an earlier attempt's are rejected again, not reused).
    """

    def __init__(
        self,
        *,
        uri: str,
        rejects_uri: str,
        schema: pa.Schema,
        run_id: str,
        storage_options: dict[str, str] | None,
        overwrite: bool,
        rows_per_part: int,
    ) -> None:
        self.uri = uri
        self.rejects_uri = rejects_uri
        self.schema = schema
        self.run_id = run_id
        self.storage_options = storage_options
        self.overwrite = overwrite
        self.rows_per_part = rows_per_part
        self.parts: list[StagedPart] = []
        self.writes: list[StagedWrite] = []

    def write(self, blocks: Iterable[Any], ctx: Any = None) -> list[StagedWrite]:
        """Stage ``blocks`` (pyarrow tables or record batches) in slices of at most ``rows_per_part`` rows."""
        tables = [pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return []
        rows = pa.concat_tables(tables)
        return [
            self._stage(rows.slice(start, self.rows_per_part)) for start in range(0, rows.num_rows, self.rows_per_part)
        ]

    def finish(self, writes: Iterable[StagedWrite]) -> None:
        """After the last write: this attempt's ``writes``, and every part the run's staging folder holds."""
        self.writes = list(writes)
        self.parts = RunStaging(self.uri, self.run_id, self.storage_options).parts()

    @property
    def rows_rejected(self) -> int:
        return sum(w.rejected for w in self.writes)

    @property
    def reject_reasons(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for w in self.writes:
            for reason, n in w.reasons.items():
                total[reason] = total.get(reason, 0) + n
        return total

    @property
    def reject_fragments(self) -> list[str]:
        return [f for w in self.writes for f in w.reject_fragments]

    def _stage(self, batch: pa.Table) -> StagedWrite:
        """Stage one slice as uncommitted Lance fragments (output and rejects) and record them as a part; the
        part's name is a digest of its rows, so a retried task overwrites its own part."""
        ok = pc.is_null(batch.column(REASON))
        good = batch.filter(ok)
        bad = batch.filter(pc.invert(ok))
        main = write_fragments(
            good, self.uri, self.schema, storage_options=self.storage_options, overwrite=self.overwrite
        )
        rejected: list[str] = []
        counts: dict[str, int] = {}
        if bad.num_rows:
            for reason in bad.column(REASON).to_pylist():
                counts[reason] = counts.get(reason, 0) + 1
            rejected = write_fragments(
                _rejects(bad, self.run_id), self.rejects_uri, REJECTS_SCHEMA, storage_options=self.storage_options
            )
        digest = hashlib.blake2b(digest_size=16)
        for id_value, h in zip(batch.column(ID).to_pylist(), batch.column(CONTENT_HASH).to_pylist(), strict=True):
            digest.update(repr(id_value).encode() + b"\0" + (h or "").encode() + b"\0")
        RunStaging(self.uri, self.run_id, self.storage_options).add_part(
            StagedPart(
                key=digest.hexdigest(),
                fragments=main,
                ids=good.column(ID).to_pylist(),
                doc_ids=good.column(DOC_ID).to_pylist() if DOC_ID in good.column_names else [],
                tokens=int(pc.sum(good.column(TOKENS)).as_py() or 0),
                truncated=int(pc.sum(pc.cast(good.column(TRUNCATED), pa.int64())).as_py() or 0),
                reject_fragments=rejected,
                rejected=bad.num_rows,
                reasons=counts,
                nodes=_count_nodes(good),
            )
        )
        return StagedWrite(rows=batch.num_rows, rejected=bad.num_rows, reasons=counts, reject_fragments=rejected)


def _rejects(bad: pa.Table, run_id: str) -> pa.Table:
    """The rejected rows as rows of the rejects table."""
    now = datetime.now(UTC)
    return pa.table(
        {
            ID: pc.cast(bad.column(ID), pa.string()),
            "reason": bad.column(REASON),
            TEXT: bad.column(TEXT),
            RUN_ID: pa.array([run_id] * bad.num_rows, pa.string()),
            "rejected_at": pa.array([now] * bad.num_rows, pa.timestamp("us", tz="UTC")),
        },
        schema=REJECTS_SCHEMA,
    )


def _count_nodes(batch: pa.Table) -> dict[str, int]:
    """Rows of ``batch`` per encoding node (node id -> rows)."""
    if NODE not in batch.column_names or not batch.num_rows:
        return {}
    counts = pc.value_counts(batch.column(NODE)).to_pylist()
    return {c["values"]: int(c["counts"]) for c in counts if c["values"]}
