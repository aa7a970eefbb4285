"""Quality metrics for elastic embeddings: pure numpy, no model.

How good is a cheap granularity? Two questions, each a number per (layer, dim):

- **Agreement** with the richest vector: :func:`agreement` is recall@k of each
  row's k nearest neighbours (cosine, the row itself excluded) against its
  neighbours under the reference vectors (full depth, full width). 1.0 means a
  search at this granularity finds the same top k; random vectors give about
  ``k / (n - 1)``.
- **Correlation with people**: :func:`pair_correlation` is the Spearman rank
  correlation between the cosines of scored text pairs and human ratings.

And how well a compatibility map serves a migration: :func:`compat_recall` is
recall@k of queries for their relevant documents, old model against old vectors,
new against new, and across the map both ways.

:func:`recommend` turns a grid of such numbers and the measured cost of each
exit layer into the cheapest granularity within a quality budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._compat import CompatMaps
from ._granularity import Granularity

__all__ = [
    "agreement",
    "compat_recall",
    "neighbours",
    "pair_correlation",
    "recall_at_k",
    "recommend",
    "retrieval_recall",
    "spearman",
]

_BLOCK = 2048  # rows of the similarity matrix held at once


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array (rows, dim); got shape {v.shape}")
    return v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)


def neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest other rows by cosine similarity: an (n, k) int array, nearest first.

    Rows need not be normalized. The row itself is never its own neighbour;
    needs ``1 <= k < n``. The similarity matrix is computed ``_BLOCK`` rows at a
    time, so memory stays at ``_BLOCK x n`` floats.
    """
    v = _unit_rows(vectors)
    n = len(v)
    if not 1 <= k < n:
        raise ValueError(f"k must be in 1..{n - 1} (fewer than the {n} rows); got {k}")
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        sims = v[start:stop] @ v.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        out[start:stop] = np.take_along_axis(top, order, axis=1)
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of the share of ``truth``'s ids that ``found`` has (both (n, k), order ignored)."""
    found, truth = np.asarray(found), np.asarray(truth)
    if found.shape != truth.shape or found.ndim != 2:
        raise ValueError(f"found and truth must be (n, k) arrays of one shape; got {found.shape} and {truth.shape}")
    n, k = truth.shape
    if n == 0 or k == 0:
        raise ValueError("recall@k of an empty neighbour list is undefined")
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2).sum()  # neighbour lists hold distinct ids
    return float(hits) / (n * k)


def agreement(vectors: np.ndarray, reference: np.ndarray | None = None, k: int = 10, *, truth=None) -> float:
    """Recall@k of ``vectors``' neighbours against ``reference``'s (same rows, any widths).

    Pass ``truth=neighbours(reference, k)`` instead of ``reference`` to reuse
    the reference's neighbours across many granularities.
    """
    if truth is None:
        if reference is None:
            raise ValueError("agreement needs reference vectors or their neighbours (truth=)")
        if len(reference) != len(vectors):
            raise ValueError(
                f"vectors have {len(vectors)} rows, reference {len(reference)}: they must be one set of rows"
            )
        truth = neighbours(reference, k)
    return recall_at_k(neighbours(vectors, truth.shape[1]), truth)


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks start..end-1 (0-based) -> mean, 1-based
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = mean_rank[np.cumsum(new) - 1]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson on ranks, ties averaged); NaN when either side is constant."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"spearman needs two equally long sequences; got {len(x)} and {len(y)}")
    if len(x) < 2:
        raise ValueError(f"spearman needs at least 2 values; got {len(x)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("spearman: the values must be finite (no NaN or inf)")
    rx, ry = _ranks(x) - (len(x) + 1) / 2.0, _ranks(y) - (len(y) + 1) / 2.0
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denom if denom > 0 else float("nan")


def pair_correlation(vectors: np.ndarray, pairs: np.ndarray, scores: np.ndarray) -> float:
    """Spearman correlation between the cosines of row pairs and their human scores.

    ``pairs`` is (m, 2) row indices into ``vectors``; ``scores`` (m,) the ratings.
    """
    v = _unit_rows(vectors)
    pairs = np.asarray(pairs, dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) != len(scores):
        raise ValueError(f"pairs must be (m, 2) with one score each; got {pairs.shape} and {len(scores)} scores")
    cosines = np.einsum("ij,ij->i", v[pairs[:, 0]], v[pairs[:, 1]])
    return spearman(cosines, scores)


def recommend(
    quality: Mapping[Granularity, float | None],
    layer_cost: Mapping[int, float],
    budget: float,
    *,
    reference: Granularity | None = None,
) -> Granularity:
    """The cheapest granularity whose quality is at least ``budget`` x the reference's.

    ``quality``: a number per granularity, higher is better (None or NaN: not
    a candidate). ``layer_cost``: the relative encode cost of each exit layer
    (full depth = 1.0). ``reference``: the richest granularity (default: the
    deepest, then widest, in ``quality``). ``budget`` in (0, 1], e.g. 0.95.

    Cheapest means: lowest encode cost of its layer first (compute is paid for
    every document and every query), then the fewest dims (storage and search
    time), then the shallower layer.

    >>> q = {Granularity(1, 32): 0.5, Granularity(2, 32): 0.96, Granularity(2, 64): 1.0}
    >>> recommend(q, {1: 0.5, 2: 1.0}, 0.95)
    Granularity(layer=2, dim=32)
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < budget <= 1.0:
        raise ValueError(
            f"quality budget must be a share of the full granularity's quality in (0, 1], e.g. 0.95; got {budget!r}"
        )
    if not quality:
        raise ValueError("recommend needs at least one granularity with a quality")
    ref = reference if reference is not None else max(quality, key=lambda g: (g.layer, g.dim))
    full = quality.get(ref)
    if full is None or not math.isfinite(full) or full <= 0:
        raise ValueError(
            f"the reference granularity {ref} has quality {full}; a budget relative to it needs a positive number"
        )
    missing = sorted({g.layer for g in quality} - set(layer_cost))
    if missing:
        raise ValueError(f"no encode cost for layer(s) {', '.join(map(str, missing))}")
    threshold = budget * full
    fits = [g for g, q in quality.items() if q is not None and math.isfinite(q) and q >= threshold]
    return min(fits, key=lambda g: (layer_cost[g.layer], g.dim, g.layer))


def _relevant_sets(relevant: Sequence[Any], queries: int, docs: int) -> list[set[int]]:
    if len(relevant) != queries:
        raise ValueError(
            f"relevant must name the relevant documents of each of the {queries} queries; got {len(relevant)}"
        )
    out = []
    for i, r in enumerate(relevant):
        ids = {int(r)} if isinstance(r, (int, np.integer)) else {int(x) for x in r}
        if not ids or any(not 0 <= x < docs for x in ids):
            raise ValueError(f"query {i}: relevant documents {sorted(ids)} must be row numbers in 0..{docs - 1}")
        out.append(ids)
    return out


def _recall(scores: np.ndarray, relevant: list[set[int]], k: int) -> float:
    """Mean over queries of the share of their relevant documents among their ``k`` best-scored."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(
        np.mean([len(rel & set(row.tolist())) / min(len(rel), k) for rel, row in zip(relevant, top, strict=True)])
    )


def retrieval_recall(queries: np.ndarray, docs: np.ndarray, relevant: Sequence[Any], k: int = 10) -> float:
    """Recall@k by cosine: the mean share of each query's relevant documents (a row number of ``docs``, or a
    list of them) among its ``k`` nearest (of at most ``k``)."""
    rel = _relevant_sets(relevant, len(queries), len(docs))
    return _recall(_unit_rows(queries) @ _unit_rows(docs).T, rel, k)


def compat_recall(
    maps: CompatMaps,
    *,
    old_queries: np.ndarray,
    new_queries: np.ndarray,
    old_docs: np.ndarray,
    new_docs: np.ndarray,
    relevant: Sequence[Any],
    old: Granularity | str,
    new: Granularity | str,
    k: int = 10,
    migrated: np.ndarray | None = None,
) -> dict[str, Any]:
    """Recall@k of a migration's four ways to search, from the queries' and documents' vectors in both spaces
    (``old`` / ``new``: the granularities; ``relevant``: each query's relevant document rows).

    ``old->old`` (the old model on the old vectors: before the migration), ``new->new`` (after it),
    ``new->map->old`` (new-model queries mapped into the old column: how a new-model search reaches rows not
    migrated yet), ``old->map->new`` (old-model queries mapped into the new column). With ``migrated`` (a bool
    per document), ``merged``: a new-model search over a table with only those documents migrated, scored as
    ``EmbeddingTable.search(..., model="new")`` does (the other documents through the map, their cosines on the
    new scale), and ``merged_migrated`` / ``merged_unmigrated``: that recall for the queries whose relevant
    documents are migrated / not.
    """
    old, new = Granularity.parse(old), Granularity.parse(new)
    rel = _relevant_sets(relevant, len(new_queries), len(new_docs))
    od, nd = _unit_rows(old_docs), _unit_rows(new_docs)
    mapped_old = maps.to_old_space(new_queries, new=new, old=old)
    mapped_new = maps.to_new_space(old_queries, old=old, new=new)
    out: dict[str, Any] = {"k": k, "queries": len(rel), "docs": len(nd), "old": str(old), "new": str(new)}
    out["old->old"] = _recall(_unit_rows(old_queries) @ od.T, rel, k)
    new_scores = _unit_rows(new_queries) @ nd.T
    out["new->new"] = _recall(new_scores, rel, k)
    mapped_scores = _unit_rows(mapped_old) @ od.T
    out["new->map->old"] = _recall(mapped_scores, rel, k)
    out["old->map->new"] = _recall(_unit_rows(mapped_new) @ nd.T, rel, k)
    if migrated is not None:
        mask = np.asarray(migrated, dtype=bool)
        if mask.shape != (len(nd),):
            raise ValueError(f"migrated must be one bool per document ({len(nd)}); got shape {mask.shape}")
        merged = np.where(mask[None, :], new_scores, maps.scores_to_new(mapped_scores, old=old, new=new))
        out["merged"] = _recall(merged, rel, k)
        for name, side in (("merged_migrated", True), ("merged_unmigrated", False)):
            picked = [i for i, r in enumerate(rel) if all(mask[d] == side for d in r)]
            out[name] = _recall(merged[picked], [rel[i] for i in picked], k) if picked else None
    return out
