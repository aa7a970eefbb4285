"""Incremental runs: what the table holds now, and one commit that adds and deletes rows.

An incremental run embeds only new and changed rows. Its commit is a single
Lance ``Update`` transaction: the staged fragments are added, and the old rows
of changed ids (and, with ``delete_missing``, ids that left the input) get
deletion vectors. Unchanged rows and their files are not touched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lance
import pyarrow as pa
from lance.fragment import FragmentMetadata

from ._lance_io import TableMovedError, commit_operation, dataset_at, dataset_version
from ._schema import CONTENT_HASH, DOC_ID, ID

__all__ = ["commit_changes", "read_hashes"]


def read_hashes(uri: str, version: int, storage_options: Mapping[str, str] | None = None) -> pa.Table:
    """``id, content_hash`` (and a chunked table's ``doc_id``) of every row of the table at ``version`` (the rest
    of the columns stay unread)."""
    ds = dataset_at(uri, version, storage_options)
    return ds.to_table(columns=[ID, CONTENT_HASH, *([DOC_ID] if DOC_ID in ds.schema.names else [])])


def _literal(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"ids must be strings or integers, got {type(value).__name__}: {value!r}")
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def commit_changes(
    uri: str,
    *,
    new_fragments: Sequence[str],
    delete_ids: Iterable[Any],
    read_version: int,
    storage_options: Mapping[str, str] | None = None,
    message: str | None = None,
) -> int | None:
    """Add ``new_fragments`` and delete the rows with ``delete_ids`` in one commit; return the new version.

    Returns None (and commits nothing) when there is nothing to add or delete.
    Refuses with TableMovedError when the table is no longer at ``read_version``.
    """
    current = dataset_version(uri, storage_options)
    if current != read_version:
        raise TableMovedError(uri, read_version, current)
    delete = set(delete_ids)
    if not new_fragments and not delete:
        return None
    ds = dataset_at(uri, read_version, storage_options)
    per_fragment: dict[int, list[Any]] = defaultdict(list)
    if delete:
        scan = ds.scanner(columns=[ID], with_row_address=True).to_table()
        ids = scan.column(ID).to_pylist()
        frag_ids = (scan.column("_rowaddr").to_numpy() >> 32).tolist()
        for id_value, frag_id in zip(ids, frag_ids, strict=True):
            if id_value in delete:
                per_fragment[frag_id].append(id_value)
    removed: list[int] = []
    updated: list[FragmentMetadata] = []
    for frag_id, doomed in sorted(per_fragment.items()):
        frag = ds.get_fragment(frag_id)
        meta = frag.delete(f"id IN ({', '.join(_literal(v) for v in doomed)})")
        if meta is None:
            removed.append(frag_id)
        else:
            updated.append(meta)
    op = lance.LanceOperation.Update(
        removed_fragment_ids=removed,
        updated_fragments=updated,
        new_fragments=[FragmentMetadata.from_json(f) for f in new_fragments],
    )
    return commit_operation(uri, op, read_version=read_version, storage_options=storage_options, message=message)
