"""Opening an output table for queries: search by text, versions, runs, rejects.

The table is a plain Lance dataset inside a LanceDB database folder; it opens
without embedjob too (``lancedb.connect(folder).open_table(name)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import lance
import numpy as np
import pyarrow as pa

from embedder import Calibration, Granularity, GranularityError

from ._funnel import FunnelStage, StageSpec, funnel_search_vectors, parse_stages
from ._index import IndexReport, build_index, describe_indexes
from ._lance_io import sibling_uri, table_exists
from ._lock import TableLock
from ._migration import MIGRATION_KEY, MigrationState
from ._migration_search import NewModelSearch, encoder_for, table_calibration
from ._names import split_table_uri
from ._provenance import METADATA_KEY, Provenance
from ._schema import (
    BOOKKEEPING_COLUMNS,
    DOC_ID,
    EMBEDDING_FUNCTIONS_KEY,
    embedding_functions,
    holds_vectors,
    vector_column,
)
from ._tags import RollbackReport, rollback_table, tags_of
from .vocab import QUERY_MODELS, QueryModel

if TYPE_CHECKING:  # the encoder (torch) loads when a query is embedded (``encoder_for``)
    from embedder import ElasticEncoder

__all__ = ["EmbeddingTable", "TableNotFoundError", "open_table"]


class TableNotFoundError(FileNotFoundError):
    """No embedjob table at the given URI."""


def open_table(
    uri: str, *, version: int | None = None, storage_options: Mapping[str, str] | None = None
) -> EmbeddingTable:
    """Open an embedjob output table (local path or ``s3://``), at its latest version or at ``version``."""
    opts = dict(storage_options or {}) or None
    try:
        ds = lance.dataset(uri, version=version, storage_options=opts)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise TableNotFoundError(f"no table at {uri!r}: {exc}") from None
    raw = (ds.schema.metadata or {}).get(METADATA_KEY)
    if not raw:
        raise TableNotFoundError(f"{uri!r} is a Lance dataset but was not written by embedjob (no provenance)")
    return EmbeddingTable(uri, ds, Provenance.from_json(raw), opts)


class EmbeddingTable:
    """An embedjob output table. ``search`` embeds the query with the table's own model and layer."""

    def __init__(
        self, uri: str, dataset: lance.LanceDataset, provenance: Provenance, storage_options: dict | None
    ) -> None:
        self.uri = uri
        self.dataset = dataset
        self.provenance = provenance
        self.storage_options = storage_options
        self._encoder: ElasticEncoder | None = None
        self._new_encoder: ElasticEncoder | None = None

    def __repr__(self) -> str:
        return (
            f"EmbeddingTable({self.uri!r}, rows={self.count_rows()}, version={self.version}, "
            f"granularities={list(self.provenance.granularities)})"
        )

    # ----------------------------------------------------------------- access
    @property
    def granularities(self) -> tuple[Granularity, ...]:
        return tuple(Granularity.parse(g) for g in self.provenance.granularities)

    @property
    def version(self) -> int:
        return int(self.dataset.version)

    def count_rows(self) -> int:
        return int(self.dataset.count_rows())

    def to_arrow(self, columns: Sequence[str] | None = None) -> pa.Table:
        return self.dataset.to_table(columns=list(columns) if columns else None)

    def versions(self) -> list[dict[str, Any]]:
        """Every Lance version: number, timestamp, and the run that committed it (from the runs table)."""
        runs = {r["table_version"]: r for r in self.runs()} if self._has("runs") else {}
        out = []
        for v in self.dataset.versions():
            run = runs.get(v["version"], {})
            out.append({"version": v["version"], "timestamp": v["timestamp"], "run_id": run.get("run_id")})
        return out

    def tags(self) -> dict[str, int]:
        """The table's version tags, name -> version: each committed run's id on the version it made, and
        ``latest-good`` on the newest version of a run that passed its checks (first in the dict)."""
        return tags_of(self.dataset)

    def rollback(self, to: str | int, *, wait_s: float = 0.0) -> RollbackReport:
        """Restore the contents of the version tagged (or numbered) ``to`` as one new version, under the table's
        lock (waiting up to ``wait_s`` for a run); nothing is deleted. This object then reads the new version.

        >>> table.rollback("latest-good").describe()   # doctest: +SKIP
        'out/t.lance: version 7 (1,204 rows) -> version 8 (1,200 rows), the contents of version 5 (tag latest-good)'

        Refused with :class:`storage.RollbackError` (naming the table's tags and versions) for a tag or version
        it does not have or no longer has (``embedjob gc`` removed it), or the version it is at.
        """
        report = rollback_table(self.uri, to, storage_options=self.storage_options, wait_s=wait_s)
        self.refresh()
        return report

    def runs(self) -> list[dict[str, Any]]:
        """The durable run records (one per run that committed), oldest first."""
        if not self._has("runs"):
            return []
        rows = lance.dataset(sibling_uri(self.uri, "runs"), storage_options=self.storage_options).to_table()
        return sorted(rows.to_pylist(), key=lambda r: r["started_at"])

    def rejects(self) -> pa.Table:
        """Rows that could not be embedded, with the reason and the run that saw them."""
        if not self._has("rejects"):
            from ._schema import REJECTS_SCHEMA

            return REJECTS_SCHEMA.empty_table()
        return lance.dataset(sibling_uri(self.uri, "rejects"), storage_options=self.storage_options).to_table()

    def _has(self, suffix: str) -> bool:
        return table_exists(sibling_uri(self.uri, suffix), self.storage_options)

    @cached_property
    def lancedb_table(self) -> Any:
        """The same table through LanceDB (for indexes and LanceDB's own query builder)."""
        import lancedb

        db, name = split_table_uri(self.uri)
        return lancedb.connect(db, storage_options=self.storage_options).open_table(name)

    @cached_property
    def calibration(self) -> Calibration | None:
        """The calibration this table's vectors (and its queries) go through; None when it has none."""
        return table_calibration(self.uri, self.provenance.calibration, self.storage_options, "the vectors")

    @property
    def migration(self) -> MigrationState | None:
        """The migration in progress at this version (new settings in ``next_vec_*``); None when there is none."""
        raw = (self.dataset.schema.metadata or {}).get(MIGRATION_KEY)
        return MigrationState.from_json(raw) if raw else None

    @cached_property
    def new_model_search(self) -> NewModelSearch:
        """What ``search(..., model="new")`` goes through: the migration and its compatibility maps (the newest
        fitted between this table's settings and the migration's). Refused with :class:`storage.MigrationError`
        when the table is not migrating or no map is fitted yet (``embedjob migrate fit-map TABLE``)."""
        return NewModelSearch.of(self.uri, self.provenance, self.migration, self.storage_options)

    # ----------------------------------------------------------------- search
    @property
    def encoder(self) -> ElasticEncoder:
        """The table's model, through the table's calibration when it has one, serving every granularity.

        Loaded once; each query runs only the layers its granularities need.
        """
        if self._encoder is None:
            self._encoder = encoder_for(self.provenance, self.calibration)
        return self._encoder

    @property
    def new_encoder(self) -> ElasticEncoder:
        """The migration's model (its ``to`` settings: pooling, max_length, calibration from next to the table),
        serving every new granularity: what embeds a ``model="new"`` query. Loaded once."""
        if self._new_encoder is None:
            to = self.new_model_search.state.to
            self._new_encoder = encoder_for(
                to, table_calibration(self.uri, to.calibration, self.storage_options, "the migration")
            )
        return self._new_encoder

    def resolve_granularity(self, granularity: str | Granularity | None) -> Granularity:
        """``granularity`` as one of this table's (default: the richest); GranularityError names the ones it has."""
        if granularity is None:
            return max(self.granularities, key=lambda g: (g.layer, g.dim))
        g = Granularity.parse(granularity)
        if g not in self.granularities:
            raise GranularityError(
                f"granularity {g} is not in this table; it has {', '.join(str(x) for x in self.granularities)}"
            )
        return g

    def embed_query(self, text: str, granularity: str | Granularity | None = None) -> np.ndarray:
        """``text``'s vector at ``granularity`` (default: the richest), as the table's rows were embedded."""
        g = self.resolve_granularity(granularity)
        return self.embed_queries(text, [g])[g]

    def embed_queries(self, text: str, granularities: Sequence[str | Granularity]) -> dict[Granularity, np.ndarray]:
        """``text`` at several granularities from one pass, run only to the deepest of them."""
        grans = [self.resolve_granularity(g) for g in granularities]
        return {g: v[0] for g, v in self.encoder.encode([text], grans).items()}

    def search(
        self,
        text: str | Sequence[str] | None = None,
        granularity: str | Granularity | None = None,
        k: int = 10,
        *,
        vector: Any = None,
        columns: Sequence[str] | None = None,
        where: str | None = None,
        nprobes: int | None = None,
        per_document: bool = False,
        model: QueryModel = "old",
        old_granularity: str | Granularity | None = None,
    ) -> pa.Table:
        """Top ``k`` rows at ``granularity`` (default: the richest), best first, for a query given as
        ``text`` (embedded as the table's rows were: same model, pooling, calibration) or as a ``vector``.

        A batch of queries (a list of texts, or a 2-D array / list of vectors) is embedded in one pass and returns
        one table with a ``query`` column (the query's position) before each hit. Returns ``id``, ``score``
        (cosine similarity), ``_distance`` and the table's text/passthrough columns (or ``columns``). Only the
        layers the granularity needs are run for a text query. ``per_document`` (a chunked table): the best
        chunk of each of the top ``k`` documents.

        ``model="new"`` (a migrating table): the query is embedded with the migration's model alone (a
        ``vector`` is one of its vectors) at ``granularity``, one of the migration's (default: the richest).
        Migrated rows are scored on their new vectors; the others on their old ``old_granularity`` column
        (default: the richest the compatibility map reaches) with the query mapped into it, those cosines put on
        the new vectors' scale by the map's equating; one list, best first, with a ``migrated`` column saying
        which vectors scored each hit. Needs a fitted map (``embedjob migrate fit-map TABLE``).

        >>> table.search("rates rise", model="new")   # doctest: +SKIP
        """
        target = self._target(granularity, model, old_granularity)
        g = target[0]
        options = {"columns": columns, "where": where, "nprobes": nprobes, "per_document": per_document}
        if (text is None) == (vector is None):
            raise ValueError("search needs a query: text (a string or a list of strings) or vector=, not both")
        if vector is not None:
            vectors = np.asarray(vector, dtype=np.float32)
            if vectors.ndim == 1:
                return self._search(vectors, target, k, **options)
            if vectors.ndim != 2 or vectors.shape[1] != g.dim:
                raise ValueError(f"vector must have shape ({g.dim},) or (n, {g.dim}) for {g}, got {vectors.shape}")
            return self._search_batch(vectors, target, k, options)
        encoder = self.encoder if target[1] is None else self.new_encoder
        if isinstance(text, str):
            return self._search(encoder.encode([text], [g])[g][0], target, k, **options)
        texts = list(text)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"queries must be strings; query {bad[0]} is {type(texts[bad[0]]).__name__}")
        vectors = encoder.encode(texts, [g])[g] if texts else np.zeros((0, g.dim))
        return self._search_batch(vectors, target, k, options)

    def _target(
        self, granularity: str | Granularity | None, model: str, old_granularity: str | Granularity | None
    ) -> tuple[Granularity, Granularity | None]:
        """(the granularity searched, None) for the table's model; (the migration's granularity, the old one its
        query is mapped into) for ``model="new"``."""
        if model not in QUERY_MODELS:
            raise ValueError(f"model must be one of {', '.join(QUERY_MODELS)}, got {model!r}")
        if model == "new":
            return self.new_model_search.resolve(granularity, old_granularity)
        if old_granularity is not None:
            raise ValueError("old_granularity is for model='new' (the column a mapped new-model query searches)")
        return self.resolve_granularity(granularity), None

    def _search_batch(
        self, vectors: np.ndarray, target: tuple[Granularity, Granularity | None], k: int, options: dict[str, Any]
    ) -> pa.Table:
        """One search per row of ``vectors``; the hits in one table, each with its query's position first."""
        parts = []
        for i, vec in enumerate(vectors):
            hits = self._search(vec, target, k, **options)
            parts.append(hits.add_column(0, "query", pa.array([i] * hits.num_rows, pa.int32())))
        if not parts:
            dim = target[0].dim
            unit = np.full(dim, 1 / np.sqrt(dim), dtype=np.float32)  # any query: only the columns are kept
            empty = self._search(unit, target, 1, **options).slice(0, 0)
            return empty.add_column(0, "query", pa.array([], pa.int32()))
        return pa.concat_tables(parts)

    def search_vector(
        self,
        vector: np.ndarray,
        granularity: str | Granularity,
        k: int = 10,
        *,
        columns: Sequence[str] | None = None,
        where: str | None = None,
        nprobes: int | None = None,
        per_document: bool = False,
        model: QueryModel = "old",
        old_granularity: str | Granularity | None = None,
    ) -> pa.Table:
        """Top ``k`` rows for a query vector at ``granularity``; through the column's index when it has one
        (``nprobes`` IVF partitions probed), rows added since the index was built are scanned exactly.

        ``per_document`` (a chunked table): the best chunk of each of the top ``k`` documents. ``model="new"``:
        ``vector`` is the migration's model's, searched as :meth:`search` does.
        """
        target = self._target(granularity, model, old_granularity)
        return self._search(vector, target, k, columns=columns, where=where, nprobes=nprobes, per_document=per_document)

    def _search(
        self,
        vector: np.ndarray,
        target: tuple[Granularity, Granularity | None],
        k: int,
        *,
        columns: Sequence[str] | None,
        where: str | None,
        nprobes: int | None,
        per_document: bool,
    ) -> pa.Table:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if columns is None:
            columns = self._result_columns()
        g, old = target

        def fetch(limit: int, cols: Sequence[str]) -> pa.Table:
            if old is None:
                return self._nearest(vector, vector_column(str(g)), limit, cols, where, nprobes)
            nearest = lambda v, col, n, c, w: self._nearest(v, col, n, c, w, nprobes)  # noqa: E731
            return self.new_model_search.hits(nearest, np.asarray(vector, dtype=np.float32), g, old, limit, cols, where)

        if not per_document:
            return fetch(k, columns)
        if not self.chunked:
            raise ValueError(
                f"per_document needs a chunked table ([chunking] in the job); {self.uri!r} has a row per text"
            )
        columns = list(columns) if DOC_ID in columns else [*columns, DOC_ID]
        limit, total = 4 * k, self.count_rows()
        while True:  # fetch more chunks until k documents are found or every row was seen
            hits = fetch(limit, columns)
            best = _first_per_document(hits)
            if best.num_rows >= k or hits.num_rows < limit or limit >= total:
                return best.slice(0, k)
            limit *= 4

    @property
    def chunked(self) -> bool:
        """A row per chunk of a document (the job had a ``[chunking]`` section)."""
        return bool(self.provenance.chunking)

    def _nearest(
        self, vector: Any, column: str, limit: int, columns: Sequence[str], where: str | None, nprobes: int | None
    ) -> pa.Table:
        query = (
            self.lancedb_table.search(np.asarray(vector, dtype=np.float32), vector_column_name=column)
            .distance_type("cosine")
            .limit(limit)
            .select([*columns, "_distance"])
        )
        if where:
            query = query.where(where)
        if nprobes is not None:
            query = query.nprobes(nprobes)
        result = query.to_arrow()
        score = pa.compute.subtract(pa.scalar(1.0, pa.float32()), result["_distance"].cast(pa.float32()))
        return result.append_column("score", score)

    def funnel_search(self, text: str, stages: StageSpec, **options: Any) -> pa.Table:
        """Matryoshka funnel: shortlist with a cheap granularity, re-score with richer ones, return the last k.

        >>> table.funnel_search("rates rise", [("l6_d64", 200), ("l6_d384", 10)])   # doctest: +SKIP

        Stage 1 searches its column (through its index when it has one); each
        later stage re-ranks the shortlist by cosine on its own column and keeps
        its k. The query is embedded once, running only the layers the stages
        need, through the table's calibration (the reason a short prefix makes a
        good shortlist; see docs/querying.md). Returns ``id``, the text/passthrough
        columns (or ``columns=``), ``score`` (the last stage's cosine) and
        ``score_<granularity>`` per stage. ``options`` are those of
        :meth:`funnel_search_vectors`.
        """
        plan = self._stages(stages)
        return self.funnel_search_vectors(self.embed_queries(text, [s.granularity for s in plan]), plan, **options)

    def funnel_search_vectors(
        self,
        queries: Mapping[Granularity, np.ndarray],
        stages: StageSpec,
        *,
        columns: Sequence[str] | None = None,
        where: str | None = None,
        nprobes: int | None = None,
        refine_factor: int | None = None,
    ) -> pa.Table:
        """:meth:`funnel_search` for query vectors already embedded (one per stage granularity).

        ``where`` filters the first stage (SQL over the table's columns);
        ``nprobes`` / ``refine_factor`` tune the first stage's IVF index search.
        """
        return funnel_search_vectors(
            self.dataset,
            queries,
            self._stages(stages),
            columns=self._result_columns() if columns is None else columns,
            where=where,
            nprobes=nprobes,
            refine_factor=refine_factor,
        )

    def _stages(self, stages: StageSpec) -> tuple[FunnelStage, ...]:
        plan = parse_stages(stages)
        for stage in plan:
            self.resolve_granularity(stage.granularity)
        return plan

    def _result_columns(self) -> list[str]:
        """Every column but the vectors (a migration's ``next_vec_*``, kept ``prev_vec_*`` too) and bookkeeping."""
        return [f.name for f in self.dataset.schema if not holds_vectors(f.name) and f.name not in BOOKKEEPING_COLUMNS]

    # ---------------------------------------------------------------- indexes
    def create_index(
        self,
        granularity: str | Granularity,
        type: str = "ivf_pq",
        *,
        num_partitions: int | None = None,
        num_sub_vectors: int | None = None,
        wait_s: float = 0.0,
    ) -> IndexReport:
        """Build (or replace) a cosine vector index on ``granularity``'s column; one new table version.

        Partitions and PQ sub-vectors default from the row count and dim
        (:func:`storage.index_params`); a table too small for ``type`` is
        refused with :class:`VectorIndexError`. Takes the table's lock (waiting
        up to ``wait_s`` for a run). This object then reads the new version.
        """
        g = self.resolve_granularity(granularity)
        report = build_index(
            self.uri,
            vector_column(str(g)),
            type,
            num_partitions=num_partitions,
            num_sub_vectors=num_sub_vectors,
            storage_options=self.storage_options,
            wait_s=wait_s,
        )
        self.refresh()
        return report

    @property
    def lancedb_search_registered(self) -> bool:
        """Whether plain LanceDB embeds text queries for this table as embedjob does: its ``embedding_functions``
        metadata names embedjob's function for every vector column, at this table's location."""
        current = (self.dataset.schema.metadata or {}).get(EMBEDDING_FUNCTIONS_KEY)
        return current == embedding_functions(self.uri, self.provenance.granularities)

    def upgrade(self, *, wait_s: float = 0.0) -> bool:
        """Bring a table an older embedjob wrote (or one moved since) up to date: write its LanceDB
        ``embedding_functions`` metadata for this location, as one new version under the table's lock.
        Returns False (and writes nothing) when there was nothing to do."""
        if self.lancedb_search_registered:
            return False
        holder = TableLock(self.uri, run_id="upgrade", storage_options=self.storage_options)
        holder.acquire(wait_s=wait_s)
        try:
            ds = lance.dataset(self.uri, storage_options=self.storage_options)
            value = embedding_functions(self.uri, self.provenance.granularities)
            ds.update_schema_metadata({EMBEDDING_FUNCTIONS_KEY.decode(): value.decode()})
        finally:
            holder.release()
        self.refresh()
        return True

    def indexes(self) -> list[dict[str, Any]]:
        """The table's vector indexes: column, type, partitions, indexed and unindexed rows."""
        return describe_indexes(self.dataset)

    def refresh(self) -> EmbeddingTable:
        """Read the table's latest version from now on (a table object otherwise keeps the version it opened)."""
        self.dataset = lance.dataset(self.uri, storage_options=self.storage_options)
        for cached in ("lancedb_table", "new_model_search"):
            self.__dict__.pop(cached, None)
        self._new_encoder = None
        return self


def _first_per_document(hits: pa.Table) -> pa.Table:
    """``hits`` (best first) with each document's first hit only: its best chunk."""
    seen: set[Any] = set()
    keep = []
    for i, doc in enumerate(hits.column(DOC_ID).to_pylist()):
        if doc not in seen:
            seen.add(doc)
            keep.append(i)
    return hits.take(pa.array(keep, pa.int64()))
