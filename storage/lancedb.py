"""Plain LanceDB embeds a query exactly as embedjob does: ``import storage.lancedb`` registers embedjob's query
embedding in LanceDB's embedding registry, and every table embedjob writes names it for each vector column.

>>> import lancedb, storage.lancedb                                                      # doctest: +SKIP
>>> lancedb.connect("out/tables").open_table("lee").search("bushfires", vector_column_name="vec_l6_d128")  # +SKIP

The query is embedded by the table's own model, run only to the granularity's layer, pooled, cut, normalized
and mapped through the table's calibration, as :meth:`storage.EmbeddingTable.embed_query` does: on a calibrated
column a vector from the plain model is not in the table's space.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from lancedb.embeddings import TextEmbeddingFunction, register
from pydantic import PrivateAttr

from embedder import Granularity

__all__ = ["EMBEDDING_FUNCTION", "EmbedjobQueries"]

#: the name tables carry in their ``embedding_functions`` metadata
EMBEDDING_FUNCTION = "embedjob"


@register(EMBEDDING_FUNCTION)
class EmbedjobQueries(TextEmbeddingFunction):
    """Texts embedded for one granularity of one embedjob table (``table``: its URI, ``granularity``: l6_d128)."""

    table: str
    granularity: str
    _opened: Any = PrivateAttr(default=None)

    def ndims(self) -> int:
        return Granularity.parse(self.granularity).dim

    def generate_embeddings(self, texts: Any, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        g = Granularity.parse(self.granularity)
        vectors = self._table().encoder.encode([str(t) for t in texts], [g])[g]
        return list(vectors)

    def _table(self) -> Any:
        if self._opened is None:
            from ._s3 import ObjectStore
            from ._table import open_table

            opts = ObjectStore.from_env().lance_options() if self.table.startswith("s3://") else None
            self._opened = open_table(self.table, storage_options=opts)
        return self._opened
