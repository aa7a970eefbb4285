"""Adding vector columns to an existing table: one new data file per fragment, one ``Merge`` commit.

Workers call :func:`backfill_fragment` for a fragment of the table at the
version the run read; the new column's values come from a function of the
fragment's ``text`` batches, in the fragment's row order. The driver commits
every fragment at once with :func:`commit_new_columns`. Rows, ids, old vectors
and their files are not touched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

import lance
import pyarrow as pa
from lance.fragment import FragmentMetadata
from lance.schema import LanceSchema
from lance.udf import BatchUDF

from ._lance_io import commit_operation, dataset_at

__all__ = ["backfill_fragment", "commit_new_columns", "fragment_ids"]


def fragment_ids(uri: str, version: int, storage_options: Mapping[str, str] | None = None) -> list[int]:
    return [f.fragment_id for f in dataset_at(uri, version, storage_options).get_fragments()]


def backfill_fragment(
    uri: str,
    version: int,
    fragment_id: int,
    compute: Callable[[pa.RecordBatch], pa.RecordBatch],
    *,
    output_schema: pa.Schema | None = None,
    columns: Sequence[str] = ("text",),
    batch_size: int = 1024,
    storage_options: Mapping[str, str] | None = None,
) -> str:
    """Write the new columns of one fragment (uncommitted); returns the fragment's new metadata as JSON.

    ``output_schema``: the new columns' schema. Without it Lance calls ``compute`` once more, on the
    fragment's first row, to learn it (for an encoder: one more model call, and that row counted twice)."""
    frag = dataset_at(uri, version, storage_options).get_fragment(fragment_id)
    udf = BatchUDF(compute, output_schema=output_schema)
    meta, _ = frag.merge_columns(udf, columns=list(columns), batch_size=batch_size)
    return json.dumps(meta.to_json())


def commit_new_columns(
    uri: str,
    fragments: Sequence[str],
    *,
    schema: pa.Schema,
    read_version: int,
    storage_options: Mapping[str, str] | None = None,
    message: str | None = None,
) -> int:
    """One commit adding the columns (``schema`` is the whole new schema, metadata included); ``message``
    names the run (``commit_message``), so whether it landed can be told later."""
    op = lance.LanceOperation.Merge(
        [FragmentMetadata.from_json(f) for f in fragments], LanceSchema.from_pyarrow(schema)
    )
    return commit_operation(uri, op, read_version=read_version, storage_options=storage_options, message=message)
