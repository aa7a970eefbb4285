"""The output table's Arrow schema: ids, hashes, passthrough columns, vectors, run columns."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from ._provenance import METADATA_KEY, Provenance
from .vocab import VECTOR_DTYPE_NAMES

__all__ = [
    "REJECTS_SCHEMA",
    "content_hash",
    "output_schema",
    "vector_array",
    "vector_column",
]

VECTOR_DTYPES: Mapping[str, pa.DataType] = {name: pa.type_for_alias(name) for name in VECTOR_DTYPE_NAMES}

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("text", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("rejected_at", pa.timestamp("us", tz="UTC")),
    ]
)


def vector_column(granularity: str) -> str:
    return f"vec_{granularity}"


def content_hash(text: str) -> str:
    """blake2b-128 of the UTF-8 text, hex: what decides whether a row must be re-embedded."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def output_schema(
    provenance: Provenance,
    *,
    id_type: pa.DataType,
    passthrough: Sequence[pa.Field] = (),
    store_text: bool = True,
) -> pa.Schema:
    """``id, content_hash, <passthrough>, [text], vec_l{L}_d{D}..., run_id, embedded_at`` + provenance."""
    vtype = VECTOR_DTYPES[provenance.vector_dtype]
    cols = [pa.field("id", id_type, nullable=False), pa.field("content_hash", pa.string(), nullable=False)]
    cols.extend(passthrough)
    if store_text:
        cols.append(pa.field("text", pa.string()))
    for g in provenance.granularities:
        dim = int(g.rsplit("_d", 1)[1])
        layer = g.split("_d", 1)[0].lstrip("l")
        cols.append(
            pa.field(
                vector_column(g),
                pa.list_(pa.field("item", vtype), dim),
                metadata={b"layer": layer.encode(), b"dim": str(dim).encode()},
            )
        )
    cols.append(pa.field("run_id", pa.string(), nullable=False))
    cols.append(pa.field("embedded_at", pa.timestamp("us", tz="UTC"), nullable=False))
    return pa.schema(cols, metadata={METADATA_KEY: provenance.to_json().encode()})


def vector_array(vectors: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """(n, dim) float array -> Arrow fixed_size_list column (what LanceDB search needs)."""
    np_dtype = np.float16 if dtype == "float16" else np.float32
    flat = np.ascontiguousarray(vectors, dtype=np_dtype).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), int(vectors.shape[1]))
