"""A staged migration's state in its table: the new settings' columns next to the old ones, and its record.

While a table migrates from the settings its vectors were made with (its provenance, "old") to a job's new
settings ("new"):

* ``vec_*``: the old settings' vectors, on every row: the table stays searchable as it was;
* ``next_vec_*``: the new settings' granularities, null on a row until it is migrated;
* schema metadata ``embedjob.migration``: :class:`MigrationState` (the new provenance, who began it, when).

:func:`begin_migration` adds the ``next_vec_*`` columns (all null: metadata only) and the record;
:func:`switch_migration`, once every row has the new vectors, renames ``next_vec_*`` to ``vec_*`` and the
old ``vec_*`` to ``prev_vec_*`` and writes the new provenance, in one commit (the old columns are then
dropped, unless kept); :func:`abort_migration` drops the ``next_vec_*`` columns and the record. Rows are never
rewritten by any of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import lance
import pyarrow as pa
from lance.schema import LanceSchema

from ._lance_io import commit_operation, dataset_at
from ._provenance import METADATA_KEY, Provenance
from ._schema import DOC_ID, ID, NEXT_PREFIX, PREV_PREFIX, is_vector_column, vector_column, vector_field

__all__ = [
    "MIGRATION_KEY",
    "MigrationError",
    "MigrationState",
    "abort_migration",
    "begin_migration",
    "migrated_rows",
    "next_column",
    "next_fields",
    "old_vectors",
    "read_migration",
    "switch_migration",
    "unmigrated_keys",
    "unmigrated_rows",
]

#: where a table keeps its migration's record (schema metadata)
MIGRATION_KEY = b"embedjob.migration"


class MigrationError(RuntimeError):
    """A migration step that cannot be taken; the message says why and what to do."""


def next_column(granularity: object) -> str:
    return NEXT_PREFIX + vector_column(str(granularity))


@dataclass(frozen=True)
class MigrationState:
    """A table's migration in progress: to what, begun by which run, when, and how many rows it had then."""

    to: Provenance
    started_by: str
    started_at: str
    rows_at_start: int
    #: keep the old columns as ``prev_vec_*`` after the switch (default: dropped)
    keep_old: bool = False

    @property
    def next_columns(self) -> list[str]:
        return [next_column(g) for g in self.to.granularities]

    def to_json(self) -> str:
        data = asdict(self)
        data["to"] = json.loads(self.to.to_json())
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> MigrationState:
        data: dict[str, Any] = json.loads(text)
        data["to"] = Provenance.from_json(json.dumps(data["to"]))
        return cls(**data)


def next_fields(to: Provenance) -> list[pa.Field]:
    """The ``next_vec_*`` columns of a migration to ``to``."""
    return [vector_field(next_column(g), g, to.vector_dtype) for g in to.granularities]


def read_migration(
    uri: str, version: int | None = None, storage_options: Mapping[str, str] | None = None
) -> MigrationState | None:
    """The table's migration in progress at ``version`` (default: the latest); None when there is none."""
    raw = (dataset_at(uri, version, storage_options).schema.metadata or {}).get(MIGRATION_KEY)
    return MigrationState.from_json(raw) if raw else None


def _contiguous(ds: lance.LanceDataset) -> bool:
    """Whether the table's field ids are 0..n-1 in schema order, depth first: what a ``Project`` commit built
    from an Arrow schema (whose ids Lance assigns in that order) needs to keep every column's data. Dropping a
    column leaves a gap."""
    ids: list[int] = []

    def walk(fields: Sequence[Any]) -> None:
        for f in fields:
            ids.append(f.id())
            walk(f.children())

    walk(ds.lance_schema.fields())
    return ids == list(range(len(ids)))


def _metadata(ds: lance.LanceDataset, **changes: bytes | None) -> dict[bytes, bytes]:
    meta = dict(ds.schema.metadata or {})
    for key, value in changes.items():
        k = key.encode() if key != "provenance" else METADATA_KEY
        if value is None:
            meta.pop(k, None)
        else:
            meta[k] = value
    return meta


def _set_metadata(uri: str, ds: lance.LanceDataset, meta: Mapping[bytes, bytes], opts: Any, message: str) -> int:
    updates = {k.decode(): v.decode() for k, v in meta.items()}
    updates.update({k.decode(): None for k in (ds.schema.metadata or {}) if k not in meta})
    op = lance.LanceOperation.UpdateConfig(schema_metadata_updates=lance.LanceOperation.UpdateMap(updates))
    return commit_operation(uri, op, read_version=ds.version, storage_options=opts, message=message)


def begin_migration(
    uri: str,
    state: MigrationState,
    *,
    read_version: int,
    storage_options: Mapping[str, str] | None = None,
    message: str | None = None,
) -> int:
    """Add the ``next_vec_*`` columns (null on every row: no data is written) and the migration's record; the
    version it made. One commit (two on a table one of whose columns was ever dropped: the columns, then the
    record; until the record lands the columns are ignored, and beginning again reuses them)."""
    ds = dataset_at(uri, read_version, storage_options)
    if read_migration(uri, read_version, storage_options) is not None:
        raise MigrationError(f"table {uri!r} is migrating already (version {read_version})")
    wanted = next_fields(state.to)
    stale = [n for n in ds.schema.names if n.startswith(NEXT_PREFIX) and n not in {f.name for f in wanted}]
    if stale:  # left by a begin that stopped before its record: null, and never read
        ds.drop_columns(stale)
        ds = dataset_at(uri, None, storage_options)
    missing = [f for f in wanted if f.name not in ds.schema.names]
    meta = _metadata(ds, **{MIGRATION_KEY.decode(): state.to_json().encode()})
    if not missing:
        return _set_metadata(uri, ds, meta, storage_options, message or "migration begins")
    if _contiguous(ds):
        schema = pa.schema([*ds.schema, *missing], metadata=meta)
        op = lance.LanceOperation.Project(LanceSchema.from_pyarrow(schema))
        return commit_operation(uri, op, read_version=ds.version, storage_options=storage_options, message=message)
    ds.add_columns(missing)
    ds = dataset_at(uri, None, storage_options)
    return _set_metadata(uri, ds, meta, storage_options, message or "migration begins")


def migrated_rows(uri: str, version: int, state: MigrationState, storage_options: Mapping[str, str] | None = None):
    """(rows with the new vectors, rows) of the table at ``version``."""
    ds = dataset_at(uri, version, storage_options)
    total = ds.count_rows()
    done = ds.count_rows(filter=f"{state.next_columns[0]} IS NOT NULL") if total else 0
    return done, total


def unmigrated_rows(
    uri: str, version: int, state: MigrationState, storage_options: Mapping[str, str] | None = None
) -> pa.Table:
    """The rows without the new vectors at ``version``: ``id`` (and a chunked table's ``doc_id``) and
    ``_rowaddr``, where a migration step reads their old vectors back instead of embedding them again."""
    ds = dataset_at(uri, version, storage_options)
    columns = [ID, *([DOC_ID] if DOC_ID in ds.schema.names else [])]
    return ds.to_table(columns=columns, filter=f"{state.next_columns[0]} IS NULL", with_row_address=True)


def unmigrated_keys(
    uri: str, version: int, state: MigrationState, storage_options: Mapping[str, str] | None = None
) -> set[Any]:
    """The ids (a chunked table's document ids) of rows without the new vectors at ``version``."""
    rows = unmigrated_rows(uri, version, state, storage_options)
    return set(rows.column(DOC_ID if DOC_ID in rows.column_names else ID).to_pylist())


def old_vectors(
    uri: str, version: int, addresses: Sequence[int], ids: Sequence[Any], columns: Sequence[str], storage_options=None
) -> pa.Table | None:
    """The ``columns`` of the rows at ``addresses`` (row addresses at ``version``), in that order; None unless
    every row read back has the id expected of it (the caller embeds them again then)."""
    got = dataset_at(uri, version, storage_options)._take_rows(list(addresses), columns=[ID, *columns])
    if got.num_rows != len(ids) or got.column(ID).to_pylist() != list(ids):
        return None
    return got.drop_columns([ID])


def switch_migration(
    uri: str,
    *,
    read_version: int,
    storage_options: Mapping[str, str] | None = None,
    message: str | None = None,
) -> int:
    """Every row has the new vectors: ``next_vec_*`` become ``vec_*``, the old ``vec_*`` become ``prev_vec_*``,
    and the provenance becomes the new settings', in one commit; then the old columns are dropped unless the
    migration keeps them. Returns the version the switch made (the drop's, when there was one).

    A table one of whose columns was ever dropped cannot be switched in one commit (Lance assigns the renamed
    schema's field ids by position): the renames and the provenance are then two commits, a moment apart.
    """
    ds = dataset_at(uri, read_version, storage_options)
    state = read_migration(uri, read_version, storage_options)
    if state is None:
        raise MigrationError(f"table {uri!r} has no migration to switch (version {read_version})")
    done, total = migrated_rows(uri, read_version, state, storage_options)
    if done != total:
        raise MigrationError(
            f"table {uri!r}: {total - done:,} of {total:,} rows have no new vectors yet; the switch waits for them"
        )
    old = [n for n in ds.schema.names if is_vector_column(n)]
    renames = {n: PREV_PREFIX + n for n in old} | {n: n[len(NEXT_PREFIX) :] for n in state.next_columns}
    meta = _metadata(ds, provenance=state.to.to_json().encode(), **{MIGRATION_KEY.decode(): None})
    if _contiguous(ds):
        fields = [f.with_name(renames.get(f.name, f.name)) for f in ds.schema]
        op = lance.LanceOperation.Project(LanceSchema.from_pyarrow(pa.schema(fields, metadata=meta)))
        version = commit_operation(uri, op, read_version=read_version, storage_options=storage_options, message=message)
    else:
        ds.alter_columns(*({"path": k, "name": v} for k, v in renames.items() if k in old))
        ds = dataset_at(uri, None, storage_options)
        ds.alter_columns(*({"path": k, "name": v} for k, v in renames.items() if k not in old))
        ds = dataset_at(uri, None, storage_options)
        version = _set_metadata(uri, ds, meta, storage_options, message or "migration switch")
    if state.keep_old or not old:
        return version
    ds = dataset_at(uri, version, storage_options)
    ds.drop_columns([renames[n] for n in old])
    return dataset_at(uri, None, storage_options).version


def abort_migration(
    uri: str,
    *,
    read_version: int,
    storage_options: Mapping[str, str] | None = None,
    message: str | None = None,
) -> int:
    """Undo a migration in one commit: its ``next_vec_*`` columns and its record go; the rows, their old vectors
    and everything else stay as they are. The version it made."""
    ds = dataset_at(uri, read_version, storage_options)
    state = read_migration(uri, read_version, storage_options)
    if state is None:
        raise MigrationError(f"table {uri!r} has no migration to abort (version {read_version})")
    meta = _metadata(ds, **{MIGRATION_KEY.decode(): None})
    names = set(state.next_columns)
    kept = [f for f in ds.schema if f.name not in names]
    trailing = [f.name for f in ds.schema][len(kept) :] == [f.name for f in ds.schema if f.name in names]
    if _contiguous(ds) and trailing:
        op = lance.LanceOperation.Project(LanceSchema.from_pyarrow(pa.schema(kept, metadata=meta)))
        return commit_operation(uri, op, read_version=read_version, storage_options=storage_options, message=message)
    version = _set_metadata(uri, ds, meta, storage_options, message or "migration aborted")
    ds = dataset_at(uri, version, storage_options)
    ds.drop_columns(sorted(names & set(ds.schema.names)))
    return dataset_at(uri, None, storage_options).version
