"""Opening an output table for queries: search by text, versions, runs, rejects.

The table is a plain Lance dataset inside a LanceDB database folder; it opens
without embedjob too (``lancedb.connect(folder).open_table(name)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import lance
import numpy as np
import pyarrow as pa

from embedder import Calibration, CalibrationError, ElasticEncoder, Granularity, GranularityError, ModelError

from ._calibrations import calibration_uri, load_calibration
from ._lance_io import sibling_uri, table_exists
from ._provenance import METADATA_KEY, Provenance
from ._schema import vector_column

__all__ = ["EmbeddingTable", "TableNotFoundError", "open_table", "split_table_uri"]


class TableNotFoundError(FileNotFoundError):
    """No embedjob table at the given URI."""


def split_table_uri(uri: str) -> tuple[str, str]:
    """``s3://b/db/articles.lance`` -> (``s3://b/db``, ``articles``): LanceDB's database and table name."""
    base = uri.rstrip("/")
    parent, _, leaf = base.rpartition("/")
    name = leaf[: -len(".lance")] if leaf.endswith(".lance") else leaf
    return (parent or "."), name


def open_table(uri: str, *, storage_options: Mapping[str, str] | None = None) -> EmbeddingTable:
    """Open an embedjob output table (local path or ``s3://``)."""
    opts = dict(storage_options or {}) or None
    try:
        ds = lance.dataset(uri, storage_options=opts)
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
        self._encoders: dict[int, ElasticEncoder] = {}

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
        fp = self.provenance.calibration
        if not fp:
            return None
        uri = calibration_uri(self.uri, fp)
        try:
            return load_calibration(uri, storage_options=self.storage_options)
        except CalibrationError as exc:
            raise CalibrationError(
                f"table {self.uri!r} was embedded with calibration {fp}, which cannot be loaded ({exc}); "
                f"queries would not go through the same maps as its vectors"
            ) from None

    # ----------------------------------------------------------------- search
    def encoder_for(self, granularity: Granularity) -> ElasticEncoder:
        """An encoder that runs the table's model only up to ``granularity``'s layer (cached per layer),
        through the table's calibration when it has one."""
        enc = self._encoders.get(granularity.layer)
        if enc is None:
            prov = self.provenance
            layer_grans = [g for g in self.granularities if g.layer == granularity.layer]
            enc = ElasticEncoder.from_pretrained(
                prov.model_path,
                layer_grans,
                pooling=prov.pooling,
                normalize=prov.normalize,
                max_length=prov.max_length,
                calibration=self.calibration,
            )
            if enc.fingerprint != prov.weights_fingerprint:
                raise ModelError(
                    prov.model_path,
                    f"its weights are now {enc.fingerprint}, but this table was embedded with "
                    f"{prov.weights_fingerprint}; query vectors would not be comparable",
                )
            self._encoders[granularity.layer] = enc
        return enc

    def _granularity(self, granularity: str | Granularity | None) -> Granularity:
        if granularity is None:
            return max(self.granularities, key=lambda g: (g.layer, g.dim))
        g = Granularity.parse(granularity)
        if g not in self.granularities:
            raise GranularityError(
                f"granularity {g} is not in this table; it has {', '.join(str(x) for x in self.granularities)}"
            )
        return g

    def embed_query(self, text: str, granularity: str | Granularity | None = None) -> np.ndarray:
        g = self._granularity(granularity)
        return self.encoder_for(g).encode([text], [g])[g][0]

    def search(
        self,
        text: str,
        granularity: str | Granularity | None = None,
        k: int = 10,
        *,
        columns: Sequence[str] | None = None,
        where: str | None = None,
    ) -> pa.Table:
        """Top ``k`` rows for ``text`` at ``granularity`` (default: the richest), best first.

        Returns ``id``, ``score`` (cosine similarity), ``_distance`` and the
        table's text/passthrough columns (or ``columns``). Only the layers the
        granularity needs are run for the query.
        """
        g = self._granularity(granularity)
        return self.search_vector(self.embed_query(text, g), g, k, columns=columns, where=where)

    def search_vector(
        self,
        vector: np.ndarray,
        granularity: str | Granularity,
        k: int = 10,
        *,
        columns: Sequence[str] | None = None,
        where: str | None = None,
    ) -> pa.Table:
        g = self._granularity(granularity)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if columns is None:
            columns = [
                f.name
                for f in self.dataset.schema
                if not f.name.startswith("vec_") and f.name not in ("content_hash", "run_id", "embedded_at")
            ]
        query = (
            self.lancedb_table.search(np.asarray(vector, dtype=np.float32), vector_column_name=vector_column(str(g)))
            .distance_type("cosine")
            .limit(k)
            .select([*columns, "_distance"])
        )
        if where:
            query = query.where(where)
        result = query.to_arrow()
        score = pa.compute.subtract(pa.scalar(1.0, pa.float32()), result["_distance"].cast(pa.float32()))
        return result.append_column("score", score)
