"""The output table's Arrow schema: ids, hashes, passthrough columns, vectors, run columns."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from embedder import Granularity

from ._provenance import METADATA_KEY, Provenance
from .vocab import VECTOR_DTYPE_NAMES

__all__ = [
    "BOOKKEEPING_COLUMNS",
    "CHAR_END",
    "CHAR_START",
    "CHUNK",
    "CHUNK_COLUMNS",
    "CONTENT_HASH",
    "DOC_ID",
    "EMBEDDED_AT",
    "EMBEDDING_FUNCTIONS_KEY",
    "ID",
    "NEXT_PREFIX",
    "PREV_PREFIX",
    "REJECTS_SCHEMA",
    "RESERVED_COLUMNS",
    "RUN_ID",
    "TEXT",
    "TEXT_TYPES",
    "VECTOR_PREFIX",
    "chunk_id",
    "chunk_ordinal",
    "content_hash",
    "embedding_functions",
    "holds_vectors",
    "is_reserved_column",
    "is_vector_column",
    "output_schema",
    "vector_array",
    "vector_column",
    "vector_field",
]

#: the columns embedjob writes in every table, besides the job's passthrough columns and the vectors
ID, CONTENT_HASH, TEXT, RUN_ID, EMBEDDED_AT = "id", "content_hash", "text", "run_id", "embedded_at"
#: a chunked table's columns: the document's id, the chunk's ordinal and its characters in the document's text
DOC_ID, CHUNK, CHAR_START, CHAR_END = "doc_id", "chunk", "char_start", "char_end"
CHUNK_COLUMNS = (DOC_ID, CHUNK, CHAR_START, CHAR_END)
RESERVED_COLUMNS = (ID, CONTENT_HASH, TEXT, RUN_ID, EMBEDDED_AT, *CHUNK_COLUMNS)
#: what a query's result leaves out besides the vectors: the hash and the run's stamp
BOOKKEEPING_COLUMNS = (CONTENT_HASH, RUN_ID, EMBEDDED_AT)
#: the Arrow types an input's text column may have (binary: decoded as UTF-8, rows that are not are rejected)
TEXT_TYPES = (pa.string(), pa.large_string(), pa.binary(), pa.large_binary(), pa.string_view())
#: a granularity's vector column is ``vec_l{L}_d{D}``
VECTOR_PREFIX = "vec_"
#: while a table migrates, the new settings' vectors are ``next_vec_l{L}_d{D}``; old ones kept after the switch
#: are ``prev_vec_l{L}_d{D}`` (``storage._migration``)
NEXT_PREFIX, PREV_PREFIX = "next_", "prev_"

VECTOR_DTYPES: Mapping[str, pa.DataType] = {name: pa.type_for_alias(name) for name in VECTOR_DTYPE_NAMES}

REJECTS_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string()),
        pa.field("reason", pa.string()),
        pa.field(TEXT, pa.string()),
        pa.field(RUN_ID, pa.string()),
        pa.field("rejected_at", pa.timestamp("us", tz="UTC")),
    ]
)


def vector_column(granularity: str | Granularity) -> str:
    return f"{VECTOR_PREFIX}{granularity}"


def is_vector_column(name: str) -> bool:
    """One of the table's granularities (``vec_*``), in its settings."""
    return name.startswith(VECTOR_PREFIX)


def holds_vectors(name: str) -> bool:
    """A vector column of any settings: ``vec_*``, a migration's ``next_vec_*``, or old ``prev_vec_*`` kept."""
    return name.startswith((VECTOR_PREFIX, NEXT_PREFIX + VECTOR_PREFIX, PREV_PREFIX + VECTOR_PREFIX))


def is_reserved_column(name: str) -> bool:
    """A column embedjob writes itself: a job cannot pass one of its input columns through under this name."""
    return name in RESERVED_COLUMNS or holds_vectors(name)


def chunk_id(doc_id: object, ordinal: int) -> str:
    """A chunk row's ``id``: its document's id and its ordinal, ``"<doc_id>#<ordinal>"``."""
    return f"{doc_id}#{ordinal}"


def chunk_ordinal(row_id: str) -> int:
    """The ordinal in a chunk row's ``id`` (the inverse of :func:`chunk_id`; a document id may hold ``#``)."""
    return int(row_id.rpartition("#")[2])


def content_hash(text: str) -> str:
    """blake2b-128 of the UTF-8 text, hex: what decides whether a row must be re-embedded."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def output_schema(
    provenance: Provenance,
    *,
    id_type: pa.DataType,
    passthrough: Sequence[pa.Field] = (),
    store_text: bool = True,
    table_uri: str | None = None,
) -> pa.Schema:
    """``id, content_hash, <passthrough>, [text], vec_l{L}_d{D}..., run_id, embedded_at`` + provenance; with
    ``table_uri``, LanceDB's ``embedding_functions`` too (``storage.lancedb``: plain LanceDB embeds a text query
    for a vector column as embedjob does).

    A chunked table (``provenance.chunking``) has a row per chunk: ``id`` is the chunk's (a string,
    :func:`chunk_id`), ``doc_id`` (of ``id_type``), ``chunk``, ``char_start`` and ``char_end`` follow it, and
    ``content_hash`` is the whole document's.
    """
    if provenance.chunking:
        cols = [
            pa.field(ID, pa.string(), nullable=False),
            pa.field(DOC_ID, id_type, nullable=False),
            pa.field(CHUNK, pa.int32(), nullable=False),
            pa.field(CHAR_START, pa.int32(), nullable=False),
            pa.field(CHAR_END, pa.int32(), nullable=False),
        ]
    else:
        cols = [pa.field(ID, id_type, nullable=False)]
    cols.append(pa.field(CONTENT_HASH, pa.string(), nullable=False))
    cols.extend(passthrough)
    if store_text:
        cols.append(pa.field(TEXT, pa.string()))
    for name in provenance.granularities:
        cols.append(vector_field(vector_column(name), name, provenance.vector_dtype))
    cols.append(pa.field(RUN_ID, pa.string(), nullable=False))
    cols.append(pa.field(EMBEDDED_AT, pa.timestamp("us", tz="UTC"), nullable=False))
    metadata = {METADATA_KEY: provenance.to_json().encode()}
    if table_uri is not None:
        metadata[EMBEDDING_FUNCTIONS_KEY] = embedding_functions(table_uri, provenance.granularities)
    return pa.schema(cols, metadata=metadata)


def vector_field(column: str, granularity: str | Granularity, vector_dtype: str) -> pa.Field:
    """A granularity's vector column: a fixed-size list of its dim in ``vector_dtype``, its layer and dim in
    the field's metadata."""
    g = granularity if isinstance(granularity, Granularity) else Granularity.parse(granularity)
    return pa.field(
        column,
        pa.list_(pa.field("item", VECTOR_DTYPES[vector_dtype]), g.dim),
        metadata={b"layer": str(g.layer).encode(), b"dim": str(g.dim).encode()},
    )


#: where LanceDB looks for a table's embedding functions
EMBEDDING_FUNCTIONS_KEY = b"embedding_functions"


def embedding_functions(table_uri: str, granularities: Sequence[str]) -> bytes:
    """The ``embedding_functions`` metadata naming ``storage.lancedb``'s function for each vector column."""
    uri = table_uri if "://" in table_uri else str(Path(table_uri).expanduser().resolve())
    return json.dumps(
        [
            {
                "name": "embedjob",
                "model": {"table": uri, "granularity": g},
                "source_column": TEXT,
                "vector_column": vector_column(g),
            }
            for g in granularities
        ]
    ).encode()


def vector_array(vectors: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """(n, dim) float array -> Arrow fixed_size_list column (what LanceDB search needs)."""
    np_dtype = np.float16 if dtype == "float16" else np.float32
    flat = np.ascontiguousarray(vectors, dtype=np_dtype).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), int(vectors.shape[1]))
