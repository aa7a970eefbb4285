"""A deterministic sample of a Lance dataset's text column (for the quality map).

Rows are chosen uniformly by a seeded generator and read with one ``take``:
the same table version and seed give the same texts, and the table is never
read whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import lance
import numpy as np
import pyarrow as pa

from embedder import embeddable_text

if TYPE_CHECKING:
    from ._table import EmbeddingTable

__all__ = ["NoStoredTextError", "sample_texts"]


class NoStoredTextError(ValueError):
    """The table (or dataset) has no column of texts to sample."""


def sample_texts(
    table_or_uri: EmbeddingTable | lance.LanceDataset | str,
    n: int,
    *,
    seed: int = 0,
    column: str = "text",
    storage_options: Mapping[str, str] | None = None,
) -> list[str]:
    """Up to ``n`` distinct non-blank texts of ``column``, rows chosen uniformly at random by ``seed``.

    Returned in row order. An embedjob table made with ``store_text = false``
    has no ``text`` column: :class:`NoStoredTextError` says so.

    >>> sample_texts("tables/articles.lance", 2000, seed=0)  # doctest: +SKIP
    """
    if n < 1:
        raise ValueError(f"sample size must be >= 1; got {n}")
    if isinstance(table_or_uri, str):
        ds = lance.dataset(table_or_uri, storage_options=dict(storage_options or {}) or None)
        uri = table_or_uri
    elif isinstance(table_or_uri, lance.LanceDataset):
        ds, uri = table_or_uri, table_or_uri.uri
    else:
        ds, uri = table_or_uri.dataset, table_or_uri.uri
    if column not in ds.schema.names:
        if column == "text":
            raise NoStoredTextError(
                f"table {uri!r} does not store its text (store_text = false), so there is nothing to sample; "
                f"evaluate its job file instead (embedjob evaluate job.toml reads the corpus), "
                f"or rebuild the table with store_text = true"
            )
        raise NoStoredTextError(f"{uri!r} has no column {column!r}; columns: {', '.join(ds.schema.names)}")
    ctype = ds.schema.field(column).type
    if not (pa.types.is_string(ctype) or pa.types.is_large_string(ctype) or pa.types.is_string_view(ctype)):
        raise NoStoredTextError(f"{uri!r}: column {column!r} has type {ctype}; expected text")
    total = ds.count_rows()
    # a little more than n, since blank and repeated texts are dropped
    want = min(total, n + n // 10 + 8)
    rows = np.sort(np.random.default_rng(seed).choice(total, size=want, replace=False)) if want else []
    values = ds.take(rows, columns=[column]).column(column).to_pylist() if want else []
    out = list(dict.fromkeys(t for t in map(embeddable_text, values) if t is not None))
    return out[:n]
