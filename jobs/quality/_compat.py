"""How well a migration's compatibility map serves search, on real text: ``migration_quality``.

A retrieval task is queries, documents and each query's relevant documents; :func:`halves` makes one from any
passages (a passage's first half is the query, its second half the document to find). Both models embed both
sides; :func:`embedder.compat_recall` scores the four ways to search (old->old, new->new, new->map->old,
old->map->new) and a new-model search over a half-migrated corpus. ``bench/migrate.py`` prints it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from embedder import CompatMaps, Granularity, compat_recall

if TYPE_CHECKING:  # the callers hand the encoders in; importing the class would import torch
    from embedder import ElasticEncoder

__all__ = ["halves", "migration_quality"]


def halves(passages: Sequence[str], min_words: int = 8) -> tuple[list[str], list[str], list[int]]:
    """(queries, documents, relevant): each passage of at least ``2 * min_words`` words split in two, its first
    half a query whose one relevant document is its second half (same position). Shorter passages are left out."""
    queries, docs = [], []
    for text in passages:
        words = text.split()
        if len(words) >= 2 * min_words:
            cut = len(words) // 2
            queries.append(" ".join(words[:cut]))
            docs.append(" ".join(words[cut:]))
    return queries, docs, list(range(len(docs)))


def migration_quality(
    maps: CompatMaps,
    docs: Sequence[str],
    queries: Sequence[str],
    relevant: Sequence[Any],
    *,
    old: ElasticEncoder,
    new: ElasticEncoder,
    old_granularity: str | Granularity | None = None,
    new_granularity: str | Granularity | None = None,
    k: int = 10,
    migrated_fraction: float = 0.5,
) -> dict[str, Any]:
    """Recall@k of ``queries`` for their ``relevant`` documents (row numbers of ``docs``), searched four ways
    with the ``old`` and ``new`` encoders and ``maps`` (see :func:`embedder.compat_recall`), and ``merged``: a
    new-model search over ``docs`` with their first ``migrated_fraction`` migrated.

    The granularities default to the richest pair the maps have. Returns the figures with the pair, ``k`` and
    the counts.

    >>> q, d, rel = halves(bench.corpora.lee_passages())                              # doctest: +SKIP
    >>> migration_quality(maps, d, q, rel, old=old_encoder, new=new_encoder)["new->map->old"]  # doctest: +SKIP
    """
    if not maps.pairs:
        raise ValueError(f"compatibility map {maps.fingerprint} has no (old, new) pair")
    o, n = _pair(maps, old_granularity, new_granularity)
    if not 0.0 <= migrated_fraction <= 1.0:
        raise ValueError(f"migrated_fraction must be in [0, 1], got {migrated_fraction}")
    migrated = np.arange(len(docs)) < round(migrated_fraction * len(docs))
    old_docs, old_queries = old.encode(list(docs), [o])[o], old.encode(list(queries), [o])[o]
    new_docs, new_queries = new.encode(list(docs), [n])[n], new.encode(list(queries), [n])[n]
    out = compat_recall(
        maps,
        old_queries=old_queries,
        new_queries=new_queries,
        old_docs=old_docs,
        new_docs=new_docs,
        relevant=relevant,
        old=o,
        new=n,
        k=k,
        migrated=migrated,
    )
    return {**out, "migrated_fraction": migrated_fraction}


def _pair(
    maps: CompatMaps, old: str | Granularity | None, new: str | Granularity | None
) -> tuple[Granularity, Granularity]:
    pairs = [
        (o, n)
        for o, n in maps.pairs
        if (old is None or o == Granularity.parse(old)) and (new is None or n == Granularity.parse(new))
    ]
    if not pairs:
        have = ", ".join(f"(old {o}, new {n})" for o, n in maps.pairs)
        raise ValueError(f"compatibility map {maps.fingerprint} has no pair for old {old} and new {new}; it has {have}")
    return max(pairs, key=lambda p: (p[1].layer, p[1].dim, p[0].layer, p[0].dim))
