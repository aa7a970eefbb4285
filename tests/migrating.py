"""A migrating table built directly (no run): every row's old vectors, some rows' new ones, as a migration
leaves it between two nights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import lance
import numpy as np
import pyarrow as pa

from embedder import Calibration, ElasticEncoder, Granularity
from storage import (
    MigrationState,
    Provenance,
    begin_migration,
    commit_changes,
    content_hash,
    next_column,
    next_fields,
    output_schema,
    save_calibration,
    vector_array,
    vector_column,
    write_fragments,
)


def provenance_of(encoder: ElasticEncoder, vector_dtype: str = "float16") -> Provenance:
    """The provenance a run with ``encoder`` (its granularities, calibration) writes."""
    cal = encoder.calibration
    return Provenance(
        model_path=str(encoder.model_dir.root),
        weights_fingerprint=encoder.fingerprint,
        granularities=tuple(str(g) for g in encoder.granularities),
        pooling=encoder.pooling.value,
        normalize=encoder.config.normalize,
        max_length=encoder.max_length,
        num_layers=encoder.num_layers,
        hidden_size=encoder.hidden_size,
        vector_dtype=vector_dtype,
        calibration=cal.fingerprint if cal is not None else None,
    )


def _rows(
    schema: pa.Schema, ids: Sequence[str], texts: Sequence[str], vectors: Mapping[str, np.ndarray], dtype: str
) -> pa.Table:
    now = datetime.now(UTC)
    cols = {
        "id": pa.array(list(ids), pa.string()),
        "content_hash": pa.array([content_hash(t) for t in texts]),
        "text": pa.array(list(texts)),
        "run_id": pa.array(["test"] * len(ids)),
        "embedded_at": pa.array([now] * len(ids), pa.timestamp("us", tz="UTC")),
    }
    for name in schema.names:
        if name in vectors:
            cols[name] = vector_array(vectors[name], dtype)
        elif name not in cols:  # a next_vec_* column of a row not migrated yet
            cols[name] = pa.nulls(len(ids), schema.field(name).type)
    return pa.table([cols[n] for n in schema.names], schema=schema)


def write_migrating_table(
    uri: str,
    ids: Sequence[str],
    texts: Sequence[str],
    old: Provenance,
    old_vectors: Mapping[Granularity, np.ndarray],
    new: Provenance,
    new_vectors: Mapping[Granularity, np.ndarray],
    migrated: np.ndarray,
    *,
    calibrations: Sequence[Calibration] = (),
    storage_options: Mapping[str, str] | None = None,
    rows_per_fragment: int = 1 << 20,
) -> str:
    """Write the table with ``old``'s vectors, begin the migration to ``new``, then commit the ``migrated`` rows
    again with their new vectors too (new fragments, the old rows deleted: one Update commit, as a migration's
    night does), ``rows_per_fragment`` rows to a fragment. ``calibrations`` are stored next to the table."""
    opts = dict(storage_options or {}) or None
    schema = output_schema(old, id_type=pa.string(), table_uri=uri)
    old_cols = {vector_column(str(g)): v for g, v in old_vectors.items()}
    rows = _rows(schema, ids, texts, old_cols, old.vector_dtype)
    lance.write_dataset(rows, uri, schema=schema, storage_options=opts, max_rows_per_file=rows_per_fragment)
    state = MigrationState(to=new, started_by="test", started_at=datetime.now(UTC).isoformat(), rows_at_start=len(ids))
    version = begin_migration(uri, state, read_version=1, storage_options=opts)
    full = lance.dataset(uri, storage_options=opts).schema
    assert all(f.name in full.names for f in next_fields(new))
    pick = np.flatnonzero(migrated)
    both = {**{k: v[pick] for k, v in old_cols.items()}, **{next_column(g): v[pick] for g, v in new_vectors.items()}}
    rows = _rows(full, [ids[i] for i in pick], [texts[i] for i in pick], both, old.vector_dtype)
    fragments = write_fragments(rows, uri, full, storage_options=opts, max_rows_per_file=rows_per_fragment)
    delete = [ids[i] for i in pick]
    commit_changes(uri, new_fragments=fragments, delete_ids=delete, read_version=version, storage_options=opts)
    for cal in calibrations:
        save_calibration(uri, cal, storage_options=opts)
    return uri
