"""Lance writes: fragments from workers, one commit from the driver.

Workers call :func:`write_fragments` and hand back JSON; the driver calls
:func:`commit` once with every fragment and the version it read at the start
(Lance's distributed-write pattern). Until that commit, readers see the
previous version; fragments of a run that never commits are orphan files that
Lance's cleanup removes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lance
import pyarrow as pa
from lance.fragment import FragmentMetadata

from ._files import table_stem
from ._provenance import METADATA_KEY, Provenance

__all__ = [
    "TableMovedError",
    "append_rows",
    "commit",
    "commit_message",
    "commit_operation",
    "committed_by",
    "count_rows",
    "dataset_schema",
    "dataset_version",
    "read_provenance",
    "read_rows",
    "sibling_uri",
    "table_exists",
    "write_fragments",
]

Mode = Literal["create", "overwrite", "append"]

logger = logging.getLogger("storage")


def commit_message(run_id: str) -> str:
    """The message of the commit run ``run_id`` makes: the table's own record that the run committed."""
    return f"embedjob run {run_id}"


def committed_by(
    uri: str, run_id: str, after_version: int | None, storage_options: Mapping[str, str] | None = None
) -> int | None:
    """The table version run ``run_id`` committed after ``after_version``, read from the commits' messages;
    None when it made none (the commit, not a record written after it, is what says a run committed)."""
    from lance.dataset import LANCE_COMMIT_MESSAGE_KEY

    ds = _open(uri, storage_options)
    if ds is None:
        return None
    wanted = commit_message(run_id)
    for v in range(int(ds.version), (after_version or 0), -1):
        txn = ds.read_transaction(v)
        props = (getattr(txn, "transaction_properties", None) or {}) if txn is not None else {}
        if props.get(LANCE_COMMIT_MESSAGE_KEY) == wanted:
            return v
    return None


def count_rows(uri: str, version: int | None, storage_options: Mapping[str, str] | None = None) -> int:
    """Rows of the table at ``version`` (0 when there is no table)."""
    if version is None:
        return 0
    return int(dataset_at(uri, version, storage_options).count_rows())


def sibling_uri(uri: str, suffix: str) -> str:
    """``out/articles.lance`` -> ``out/articles_<suffix>.lance`` (rejects, runs)."""
    return f"{table_stem(uri)}_{suffix}.lance"


def dataset_at(uri: str, version: int | None, storage_options: Mapping[str, str] | None) -> lance.LanceDataset:
    """The dataset at ``version`` (None: the latest), with the table's storage options."""
    return lance.dataset(uri, version=version, storage_options=dict(storage_options or {}) or None)


def _open(uri: str, storage_options: Mapping[str, str] | None) -> lance.LanceDataset | None:
    try:
        return lance.dataset(uri, storage_options=dict(storage_options or {}) or None)
    except (FileNotFoundError, ValueError, OSError) as exc:
        text = str(exc).lower()
        if "not found" in text or "does not exist" in text or "no such file" in text:
            return None
        raise


def table_exists(uri: str, storage_options: Mapping[str, str] | None = None) -> bool:
    return _open(uri, storage_options) is not None


def dataset_schema(uri: str, storage_options: Mapping[str, str] | None = None) -> pa.Schema | None:
    ds = _open(uri, storage_options)
    return None if ds is None else ds.schema


def dataset_version(uri: str, storage_options: Mapping[str, str] | None = None) -> int | None:
    ds = _open(uri, storage_options)
    return None if ds is None else int(ds.version)


def read_provenance(uri: str, storage_options: Mapping[str, str] | None = None) -> Provenance | None:
    """The provenance in a table's schema metadata; None when the table doesn't exist or has none."""
    ds = _open(uri, storage_options)
    if ds is None:
        return None
    raw = (ds.schema.metadata or {}).get(METADATA_KEY)
    return Provenance.from_json(raw) if raw else None


def read_rows(
    uri: str, columns: Sequence[str] | None = None, *, storage_options: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every row of a small side table (runs, rejects) as dicts; [] when it does not exist."""
    ds = _open(uri, storage_options)
    if ds is None:
        return []
    return ds.to_table(columns=list(columns) if columns else None).to_pylist()


def write_fragments(
    table: pa.Table,
    uri: str,
    schema: pa.Schema,
    *,
    storage_options: Mapping[str, str] | None = None,
    max_rows_per_file: int = 1 << 20,
    overwrite: bool = False,
) -> list[str]:
    """Write ``table`` as uncommitted fragments of the dataset at ``uri``; returns their JSON.

    ``overwrite``: for an Overwrite commit, so ``schema`` may differ from the dataset's current one. Where
    there is no dataset yet the fragments are written for its creation (Lance warns "No existing dataset ...,
    it will be created" on the terminal otherwise).
    """
    if table.num_rows == 0:
        return []
    table = table.select(schema.names).cast(schema)
    mode = "overwrite" if overwrite else "append"
    frags = lance.fragment.write_fragments(
        table,
        uri,
        schema=schema,
        max_rows_per_file=max_rows_per_file,
        storage_options=dict(storage_options or {}) or None,
        mode=mode if table_exists(uri, storage_options) else "create",
    )
    return [json.dumps(f.to_json()) for f in frags]


class TableMovedError(RuntimeError):
    """The table got a new version after this run read it; committing would be based on stale state."""

    def __init__(self, uri: str, read_version: int | None, current: int | None) -> None:
        self.uri, self.read_version, self.current = uri, read_version, current
        super().__init__(
            f"table {uri!r} is at version {current}, but this run planned against version {read_version} "
            f"(another writer committed meanwhile); nothing was committed. Run the job again"
        )

    def __reduce__(self):
        return (type(self), (self.uri, self.read_version, self.current))


def commit_operation(
    uri: str,
    op: Any,
    *,
    read_version: int | None,
    storage_options: Mapping[str, str] | None = None,
    message: str | None = None,
    strict: bool = True,
) -> int:
    """Commit one Lance operation; returns the new version.

    ``strict``: refuse with TableMovedError unless the table is still at
    ``read_version`` (None: it must not exist yet). Lance itself only refuses
    *conflicting* concurrent commits; a run planned against one version must
    not land on another. An Overwrite (create, overwrite) is committed as
    exactly ``read_version + 1`` in one atomic step (Lance with no retries
    writes that version's manifest only if no other writer did). Appends and
    updates are rebased by Lance onto a commit that slipped in after the check
    (data-safe: conflicting changes are refused); embedjob's own writers cannot
    slip in, they hold the table's lock, so a rebase means a writer outside
    embedjob and is logged as an error.
    """
    from lance.commit import CommitConflictError

    if strict:
        current = dataset_version(uri, storage_options)
        if current != read_version:
            raise TableMovedError(uri, read_version, current)
    one_step = strict and read_version is not None and isinstance(op, lance.LanceOperation.Overwrite)
    try:
        ds = lance.LanceDataset.commit(
            uri,
            op,
            read_version=read_version,
            storage_options=dict(storage_options or {}) or None,
            commit_message=message,
            **({"max_retries": 0} if one_step else {}),
        )
    except CommitConflictError:
        if not strict:
            raise
        raise TableMovedError(uri, read_version, dataset_version(uri, storage_options)) from None
    version = int(ds.version)
    if strict and read_version is not None and version != read_version + 1:
        logger.error(
            "table %s: another writer committed between this commit's version check and the commit itself; "
            "Lance merged this commit (%s) after it as version %d (planned against %d). embedjob's runs hold "
            "the table's lock: look for a writer outside embedjob",
            uri,
            message,
            version,
            read_version,
        )
    return version


def commit(
    uri: str,
    fragments: Sequence[str],
    *,
    schema: pa.Schema,
    mode: Mode,
    read_version: int | None,
    storage_options: Mapping[str, str] | None = None,
    message: str | None = None,
    strict: bool = False,
) -> int:
    """One Lance commit of every staged fragment; returns the new version.

    ``create`` and ``overwrite`` write a new version holding only these
    fragments (old versions stay readable until cleaned up); ``append`` adds
    them (``append`` to a table that doesn't exist yet, ``read_version``
    None, creates it). ``read_version`` is the version the run planned against: a
    conflicting concurrent commit makes Lance refuse instead of mixing; with
    ``strict`` any commit since then does (:func:`commit_operation`).
    """
    frags = [FragmentMetadata.from_json(f) for f in fragments]
    op: Any
    if mode == "append" and read_version is not None:
        op = lance.LanceOperation.Append(frags)
    else:
        op = lance.LanceOperation.Overwrite(schema, frags)
    return commit_operation(
        uri, op, read_version=read_version, storage_options=storage_options, message=message, strict=strict
    )


def append_rows(uri: str, table: pa.Table, *, storage_options: Mapping[str, str] | None = None) -> int:
    """Small driver-side append (run records, rejects): creates the dataset on first use.

    A table made by an older embedjob gets the new columns first (null in its old rows).
    """
    opts = dict(storage_options or {}) or None
    existing = _open(uri, storage_options)
    mode = "create"
    if existing is not None:
        mode = "append"
        missing = [f for f in table.schema if f.name not in existing.schema.names]
        if missing:
            existing.add_columns(missing)
            existing = lance.dataset(uri, storage_options=opts)
        table = table.select(existing.schema.names).cast(existing.schema)
    ds = lance.write_dataset(table, uri, mode=mode, storage_options=opts)
    return int(ds.version)
