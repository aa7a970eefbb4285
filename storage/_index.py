"""Vector indexes on a table's granularity columns: defaults from row count and dim, clear refusals.

An index is built with Lance's ``create_index`` (one new table version) under
the table's lock, so it never races a run's commit. Rows added after an index
was built are still found: Lance searches unindexed fragments exactly and
merges the results. A job's ``[index]`` section rebuilds after each run that
changed the table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import lance

from ._lock import TableLock
from .vocab import INDEX_TYPES

__all__ = [
    "MIN_INDEX_ROWS",
    "IndexParams",
    "IndexReport",
    "VectorIndexError",
    "build_index",
    "describe_indexes",
    "index_params",
]

_LANCE_TYPE = {t: t.upper() for t in INDEX_TYPES}  # Lance spells them in capitals: IVF_PQ, ...
#: Lance trains IVF centroids on 256 rows per partition (sample_rate) and PQ codebooks of 2^8 codes: with fewer
#: rows than this there is nothing to train, and an exact scan is as fast as any index anyway.
ROWS_PER_PARTITION = 256
MIN_INDEX_ROWS: dict[str, int] = {t: ROWS_PER_PARTITION for t in INDEX_TYPES}
_WHY_MIN = {
    "ivf_pq": "its IVF centroids train on 256 rows per partition and its PQ codebooks have 256 codes",
    "ivf_hnsw_sq": "its IVF centroids train on 256 rows per partition",
    "ivf_flat": "its IVF centroids train on 256 rows per partition",
}
#: rows per partition the defaults aim for with HNSW inside each partition (bigger, fewer partitions)
_HNSW_PARTITION_ROWS = 100_000


class VectorIndexError(ValueError):
    """An index cannot be built as asked: the message names the value and what is allowed."""


@dataclass(frozen=True)
class IndexParams:
    """What an index is built with; defaults come from :func:`index_params`."""

    type: str
    num_partitions: int
    num_sub_vectors: int | None  # ivf_pq only
    distance_type: str = "cosine"

    def describe(self) -> str:
        sub = f", {self.num_sub_vectors} sub-vectors" if self.num_sub_vectors else ""
        return f"{self.type} ({self.num_partitions} partitions{sub}, {self.distance_type})"


@dataclass(frozen=True)
class IndexReport:
    column: str
    action: Literal["built", "skipped"]
    params: IndexParams | None
    rows: int
    seconds: float
    version: int
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["params"] = asdict(self.params) if self.params else None
        return out


def index_params(
    rows: int,
    dim: int,
    type: str = "ivf_pq",
    *,
    num_partitions: int | None = None,
    num_sub_vectors: int | None = None,
) -> IndexParams:
    """Defaults for ``type`` on ``rows`` vectors of ``dim`` dims, checking any values given.

    * partitions: about sqrt(rows) for IVF (at most rows / 256, so every
      partition has rows to train on); for ivf_hnsw_sq one partition per
      ~100k rows, since HNSW searches inside each.
    * PQ sub-vectors (ivf_pq): 8 dims each (dim / 8), or the nearest divisor of dim.
    """
    key = str(type).lower().replace("-", "_")
    if key not in INDEX_TYPES:
        raise VectorIndexError(f"index type {type!r} is not supported; choose one of {', '.join(INDEX_TYPES)}")
    need = MIN_INDEX_ROWS[key]
    if rows < need:
        raise VectorIndexError(
            f"the table has {rows:,} rows; an {key} index needs at least {need:,} ({_WHY_MIN[key]}). "
            f"Search works without an index: at this size an exact scan is as fast"
        )
    most = rows // ROWS_PER_PARTITION
    if num_partitions is None:
        if key == "ivf_hnsw_sq":
            num_partitions = max(1, rows // _HNSW_PARTITION_ROWS)
        else:
            num_partitions = max(1, min(round(math.sqrt(rows)), most))
    elif not 1 <= num_partitions <= most:
        raise VectorIndexError(
            f"num_partitions = {num_partitions} for {rows:,} rows: must be between 1 and {most:,} "
            f"(each partition trains on {ROWS_PER_PARTITION} rows)"
        )
    if key != "ivf_pq":
        if num_sub_vectors is not None:
            raise VectorIndexError(f"num_sub_vectors = {num_sub_vectors}: only ivf_pq has sub-vectors, not {key}")
        return IndexParams(key, int(num_partitions), None)
    divisors = [d for d in range(1, dim + 1) if dim % d == 0]
    if num_sub_vectors is None:
        num_sub_vectors = min(divisors, key=lambda d: (abs(dim / d - 8), -d))
    elif num_sub_vectors not in divisors:
        raise VectorIndexError(
            f"num_sub_vectors = {num_sub_vectors} for a {dim}-dim column: must divide {dim}; "
            f"allowed: {', '.join(map(str, divisors))}"
        )
    return IndexParams(key, int(num_partitions), int(num_sub_vectors))


def build_index(
    uri: str,
    column: str,
    type: str = "ivf_pq",
    *,
    num_partitions: int | None = None,
    num_sub_vectors: int | None = None,
    storage_options: Mapping[str, str] | None = None,
    lock: bool = True,
    wait_s: float = 0.0,
) -> IndexReport:
    """Build (or replace) the vector index on ``column``; one new table version.

    Takes the table's lock unless the caller holds it (``lock=False``, as a
    run does when it rebuilds indexes after its commit). Raises
    :class:`VectorIndexError` when the table is too small for ``type`` or a
    parameter does not fit the column.
    """
    opts = dict(storage_options or {}) or None
    holder = TableLock(uri, run_id=f"index-{column}", storage_options=opts) if lock else None
    if holder is not None:
        holder.acquire(wait_s=wait_s)
    try:
        ds = lance.dataset(uri, storage_options=opts)
        field = ds.schema.field(column) if column in ds.schema.names else None
        if field is None or not hasattr(field.type, "list_size"):
            vectors = [f.name for f in ds.schema if hasattr(f.type, "list_size")]
            raise VectorIndexError(f"column {column!r} is not a vector column of {uri!r}; it has {', '.join(vectors)}")
        rows = ds.count_rows()
        params = index_params(
            rows,
            field.type.list_size,
            type,
            num_partitions=num_partitions,
            num_sub_vectors=num_sub_vectors,
        )
        t0 = time.perf_counter()
        extra = {"num_sub_vectors": params.num_sub_vectors} if params.num_sub_vectors else {}
        ds = ds.create_index(
            column,
            index_type=_LANCE_TYPE[params.type],
            name=index_name(column),
            metric=params.distance_type,
            replace=True,
            num_partitions=params.num_partitions,
            storage_options=opts,
            **extra,
        )
        return IndexReport(column, "built", params, rows, time.perf_counter() - t0, int(ds.version))
    finally:
        if holder is not None:
            holder.release()


def index_name(column: str) -> str:
    return f"{column}_idx"


def describe_indexes(dataset: lance.LanceDataset) -> list[dict[str, Any]]:
    """One dict per vector index: name, column, type, partitions, indexed and unindexed rows."""
    out = []
    for idx in dataset.describe_indices():
        fields = list(idx.field_names or [])
        stats = dataset.stats.index_stats(idx.name)
        if not str(stats.get("index_type", idx.index_type)).upper().startswith("IVF"):
            continue  # a scalar index (btree, bitmap, ...)
        segments = stats.get("indices") or stats.get("segments") or [{}]
        sub = segments[0].get("sub_index") or {}
        out.append(
            {
                "name": idx.name,
                "column": fields[0] if fields else "?",
                "type": str(stats.get("index_type", idx.index_type)).lower(),
                "distance_type": segments[0].get("metric_type"),
                "num_partitions": segments[0].get("num_partitions"),
                "num_sub_vectors": sub.get("num_sub_vectors"),
                "indexed_rows": int(stats.get("num_indexed_rows", 0)),
                "unindexed_rows": int(stats.get("num_unindexed_rows", 0)),
            }
        )
    return out
