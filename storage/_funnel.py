"""Funnel search (Matryoshka adaptive retrieval): shortlist cheaply, re-score with richer granularities.

Stage 1 is a nearest-neighbour search on a small column (through its vector
index when it has one; unindexed rows are scanned exactly). Each later stage
reads only its shortlist's vectors of a richer column (``take`` by row id) and
re-ranks by cosine, keeping its ``k``. Every stage reads the same table
version, so the row ids stay valid between stages.

Why the table's calibration matters here: a raw prefix of an encoder that was
never trained Matryoshka-style keeps little of the full vector's geometry (with
all-MiniLM-L6-v2 a raw (6, 64) shortlist of 200 held ~78% of the exact (6, 384)
top 10); the calibration's PCA rotation puts the most variance in the first
dims (~97%). Query vectors go through the same calibration as the table's.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lance
import numpy as np
import pyarrow as pa

from embedder import Granularity, GranularityError

__all__ = ["FunnelStage", "funnel_search_vectors", "parse_stages"]

StageSpec = str | Sequence["FunnelStage | tuple[str | Granularity, int] | str"]


@dataclass(frozen=True)
class FunnelStage:
    """Keep the best ``k`` rows by cosine at ``granularity``."""

    granularity: Granularity
    k: int

    def __str__(self) -> str:
        return f"{self.granularity}:{self.k}"


def parse_stages(stages: StageSpec) -> tuple[FunnelStage, ...]:
    """``"l6_d64:200,l6_d384:10"``, ``[("l6_d64", 200), ("l6_d384", 10)]`` or FunnelStages -> checked stages.

    Each stage keeps at most as many rows as the one before, and names a
    granularity once.
    """
    items: list[Any] = [s for s in re.split(r"[,\s]+", stages) if s] if isinstance(stages, str) else list(stages)
    if not items:
        raise ValueError("a funnel needs at least one stage, e.g. 'l6_d64:200,l6_d384:10'")
    out = [_parse_stage(item) for item in items]
    _check_funnel(out)
    return tuple(out)


def _parse_stage(item: Any) -> FunnelStage:
    """One stage, given as a FunnelStage, ``"GRANULARITY:K"`` or ``(granularity, k)``."""
    if isinstance(item, FunnelStage):
        return item
    if isinstance(item, str):
        gran, sep, k = item.rpartition(":")
        if not sep:
            raise ValueError(f"funnel stage {item!r}: expected GRANULARITY:K, e.g. l6_d64:200")
        item = (gran, k)
    try:
        gran, k = item
        k = int(k)
    except (TypeError, ValueError):
        raise ValueError(
            f"funnel stage {item!r}: expected (granularity, k) with an integer k, e.g. ('l6_d64', 200)"
        ) from None
    if k < 1:
        raise ValueError(f"funnel stage {gran}:{k}: k must be >= 1")
    return FunnelStage(Granularity.parse(gran), k)


def _check_funnel(stages: list[FunnelStage]) -> None:
    """Each stage keeps at most as many rows as the one before, and names a granularity once."""
    for before, after in itertools.pairwise(stages):
        if after.k > before.k:
            raise ValueError(
                f"funnel stage {after} keeps more rows than the stage before it ({before}); "
                f"each stage re-scores the previous stage's shortlist, so k must not grow"
            )
    grans = [s.granularity for s in stages]
    if len(set(grans)) != len(grans):
        raise ValueError(f"funnel stages name a granularity twice: {', '.join(map(str, stages))}")


def funnel_search_vectors(
    dataset: lance.LanceDataset,
    queries: Mapping[Granularity, np.ndarray],
    stages: Sequence[FunnelStage],
    *,
    columns: Sequence[str] = ("id",),
    where: str | None = None,
    nprobes: int | None = None,
    refine_factor: int | None = None,
) -> pa.Table:
    """Run the funnel for query vectors given per stage granularity.

    Returns the last stage's rows, best first: ``columns``, ``score`` (cosine
    at the last stage) and ``score_<granularity>`` for every stage (each
    stage's cosine for the rows it saw).
    """
    from ._schema import vector_column

    first, rest = stages[0], stages[1:]
    missing = [str(s.granularity) for s in stages if s.granularity not in queries]
    if missing:
        raise GranularityError(f"no query vector for funnel stage granularity {', '.join(missing)}")
    nearest: dict[str, Any] = {
        "column": vector_column(str(first.granularity)),
        "q": np.asarray(queries[first.granularity], dtype=np.float32),
        "k": first.k,
        "metric": "cosine",
    }
    if nprobes is not None:
        nearest["nprobes"] = nprobes
    if refine_factor is not None:
        nearest["refine_factor"] = refine_factor
    hits = dataset.to_table(
        nearest=nearest, columns=["_distance"], with_row_id=True, filter=where, prefilter=where is not None
    )
    row_ids = hits["_rowid"].to_numpy()
    scores = {first.granularity: 1.0 - hits["_distance"].to_numpy().astype(np.float32)}
    order = np.argsort(-scores[first.granularity], kind="stable")
    row_ids, scores[first.granularity] = row_ids[order], scores[first.granularity][order]
    for stage in rest:
        col = vector_column(str(stage.granularity))
        vectors = _vectors(dataset, row_ids, col)
        sim = _cosine(vectors, np.asarray(queries[stage.granularity], dtype=np.float32))
        keep = np.argsort(-sim, kind="stable")[: stage.k]
        row_ids = row_ids[keep]
        for g in scores:
            scores[g] = scores[g][keep]
        scores[stage.granularity] = sim[keep]
    last = stages[-1].granularity
    out = _take(dataset, row_ids, list(columns)) if columns else pa.table({})
    out = out.append_column("score", pa.array(scores[last], pa.float32()))
    for stage in stages:
        out = out.append_column(f"score_{stage.granularity}", pa.array(scores[stage.granularity], pa.float32()))
    return out


def _take(dataset: lance.LanceDataset, row_ids: np.ndarray, columns: list[str]) -> pa.Table:
    """Rows by row id, in the order given (Lance returns them in request order)."""
    if len(row_ids) == 0:
        return dataset.schema.empty_table().select(columns)
    return dataset._take_rows(row_ids.tolist(), columns=columns)


def _vectors(dataset: lance.LanceDataset, row_ids: np.ndarray, column: str) -> np.ndarray:
    """The shortlist's vectors, in ``row_ids`` order; read in row-address order (fewer, closer reads)."""
    order = np.argsort(row_ids, kind="stable")
    arr = _take(dataset, row_ids[order], [column])[column].combine_chunks()
    flat = arr.values.to_numpy(zero_copy_only=False)
    out = np.empty((len(arr), arr.type.list_size), dtype=np.float32)
    out[order] = flat.reshape(len(arr), arr.type.list_size)
    return out


def _cosine(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
    return (vectors @ query / np.clip(norms, 1e-12, None)).astype(np.float32)
