"""The run's id registry: which row keeps each id, and what each id needs (embed, skip, reject).

Runs as one Ray actor holding ids, 16-byte row keys and content hashes (not
text), off the driver. Claims are idempotent: a retried task presents the same
row keys and gets the same answers, so counts stay exact under retries.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from storage.vocab import keeps_existing_rows, migrates, updates_rows

__all__ = ["EMBED", "SKIP", "IdRegistry"]

#: statuses a claim answers with
EMBED = ("new", "changed", "migrating")
SKIP = ("unchanged", "staged")
DUPLICATE = "duplicate"
EXISTS = "exists"  # append mode: the id is already in the table


class IdRegistry:
    """Per run: the first row to claim an id keeps it; ids are compared with the table and the staging.

    - ``mode`` ``incremental``: an id whose content hash equals the table's is
      ``unchanged`` (skipped); with another hash ``changed`` (embedded, its old
      row deleted at commit); else ``new``.
    - ``append``: an id already in the table is refused (``exists``).
    - ``create`` / ``overwrite``: every id is ``new``.
    - ``migrate``: as incremental, and an unchanged id whose row has no new-settings vectors yet is
      ``migrating`` (embedded again both ways, its old row replaced) while the run's slice lasts: at most
      ``slice_rows`` ids, taken before ``slice_s`` seconds have passed.
    - ids staged by an earlier attempt of this run (a resume) are ``staged``:
      not embedded again (those of the old rows count against the slice).
    """

    def __init__(
        self,
        *,
        mode: str = "create",
        table_uri: str | None = None,
        read_version: int | None = None,
        staging_uri: tuple[str, str] | None = None,
        storage_options: Mapping[str, str] | None = None,
        slice_rows: int | None = None,
        slice_s: float | None = None,
    ) -> None:
        self.mode = mode
        self._owner: dict[Any, bytes] = {}
        self._status: dict[Any, str] = {}
        self._seen: set[Any] = set()  # ids of rows rejected for their text: in the input, so not "missing"
        self._batches: dict[bytes, int] = {}
        self._existing: dict[Any, str] = {}
        self._staged: set[Any] = set()
        # a chunked table: its rows (chunk ids) per document id, and the chunks an earlier attempt staged
        self._rows_of: dict[Any, list[str]] = {}
        self._staged_chunks: dict[Any, list[int]] = {}
        self._deleted = 0
        # a migration step: the ids (documents) of the old rows, and how many this run takes
        self._unmigrated: set[Any] = set()
        # their rows (ids, a chunked table's chunk ids) -> (row address at read_version, id or document id)
        self._addresses: dict[Any, tuple[int, Any]] = {}
        self._slice_rows = slice_rows
        self._deadline = None if slice_s is None else time.monotonic() + slice_s
        self._sliced = 0
        if keeps_existing_rows(mode) and table_uri and read_version is not None:
            self._read_table(table_uri, read_version, storage_options)
            if migrates(mode):
                self._read_unmigrated(table_uri, read_version, storage_options)
        if staging_uri is not None:
            self._read_staging(staging_uri, storage_options)
            self._sliced = len(self._staged & self._unmigrated)

    def _read_table(self, uri: str, version: int, storage_options: Mapping[str, str] | None) -> None:
        """The table's ids and hashes; a chunked table's by document."""
        from storage import CONTENT_HASH, DOC_ID, ID, read_hashes

        table = read_hashes(uri, version, storage_options)
        hashes = table.column(CONTENT_HASH).to_pylist()
        if DOC_ID not in table.column_names:
            self._existing = dict(zip(table.column(ID).to_pylist(), hashes, strict=True))
            return
        docs = table.column(DOC_ID).to_pylist()
        self._existing = dict(zip(docs, hashes, strict=True))
        for doc, row in zip(docs, table.column(ID).to_pylist(), strict=True):
            self._rows_of.setdefault(doc, []).append(row)

    def _read_unmigrated(self, uri: str, version: int, storage_options: Mapping[str, str] | None) -> None:
        from storage import DOC_ID, ID, read_migration, unmigrated_rows

        state = read_migration(uri, version, storage_options)
        if state is None:
            return
        rows = unmigrated_rows(uri, version, state, storage_options)
        ids = rows.column(ID).to_pylist()
        keys = rows.column(DOC_ID).to_pylist() if DOC_ID in rows.column_names else ids
        self._unmigrated = set(keys)
        self._addresses = dict(zip(ids, zip(rows.column("_rowaddr").to_pylist(), keys, strict=True), strict=True))

    def addresses(self, row_ids: Sequence[Any]) -> list[int | None]:
        """A migration step: for each row (id, or chunk id) of an old row it takes now, the row's address at
        the version read, where its old vectors are read back; None for the others (they are embedded)."""
        out: list[int | None] = []
        for row in row_ids:
            hit = self._addresses.get(row)
            out.append(hit[0] if hit is not None and self._status.get(hit[1]) == "migrating" else None)
        return out

    def _read_staging(self, staging_uri: tuple[str, str], storage_options: Mapping[str, str] | None) -> None:
        """What an earlier attempt of this run staged: ids, or (chunked) documents and their chunks."""
        from storage import RunStaging, chunk_ordinal

        for part in RunStaging(staging_uri[0], staging_uri[1], storage_options).parts():
            if not part.doc_ids:
                self._staged.update(part.ids)
                continue
            for doc, row in zip(part.doc_ids, part.ids, strict=True):
                self._staged.add(doc)
                self._staged_chunks.setdefault(doc, []).append(chunk_ordinal(row))

    def classify(
        self,
        batch_key: bytes,
        rows: int,
        ids: Sequence[Any],
        keys: Sequence[bytes | None],
        hashes: Sequence[str | None],
    ) -> list[str | None]:
        """One status per row; a row with key None was rejected for its text (it only marks its id as seen)."""
        self._batches[batch_key] = rows
        out: list[str | None] = []
        for id_value, key, h in zip(ids, keys, hashes, strict=True):
            if key is None:
                if id_value is not None:
                    self._seen.add(id_value)
                out.append(None)
                continue
            owner = self._owner.setdefault(id_value, key)
            if owner != key:
                out.append(DUPLICATE)
                continue
            status = self._status.get(id_value)
            if status is None:
                status = self._decide(id_value, h)
                self._status[id_value] = status
            out.append(status)
        return out

    def _decide(self, id_value: Any, h: str | None) -> str:
        if id_value in self._staged:
            return "staged"
        old = self._existing.get(id_value)
        if self.mode == "append":
            return EXISTS if old is not None else "new"
        if updates_rows(self.mode) and old is not None:
            if old != h:
                return "changed"
            return "migrating" if self._take_slice(id_value) else "unchanged"
        return "new"

    def _take_slice(self, id_value: Any) -> bool:
        """Whether this old row is re-embedded now: it has no new vectors and the run's slice is not spent."""
        if id_value not in self._unmigrated:
            return False
        if self._slice_rows is not None and self._sliced >= self._slice_rows:
            return False
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return False
        self._sliced += 1
        return True

    def staged_chunks(self, doc_ids: Sequence[Any]) -> dict[Any, list[int]]:
        """Per document id, the chunk ordinals an earlier attempt of this run staged (a resume embeds the rest)."""
        return {d: self._staged_chunks.get(d, []) for d in doc_ids}

    def counts(self) -> dict[str, int]:
        out = {"read": sum(self._batches.values()), "new": 0, "changed": 0, "unchanged": 0, "staged": 0}
        out["migrating"] = 0
        out["sliced"] = self._sliced  # a migration step: old rows taken (by an earlier attempt too)
        out["deleted"] = self._deleted  # once deletions() ran
        for status in self._status.values():
            if status in out:
                out[status] += 1
        return out

    def deletions(self, delete_missing: bool) -> tuple[list[Any], list[Any]]:
        """Table ids whose old rows go at commit: (replaced by a new vector, gone from the input).

        The second list is empty unless ``delete_missing``. In a chunked table a document's every chunk goes.
        """
        if not updates_rows(self.mode):
            return [], []
        replaced = [
            i for i, s in self._status.items() if s in ("changed", "staged", "migrating") and i in self._existing
        ]
        missing = []
        if delete_missing:
            missing = [i for i in self._existing if i not in self._status and i not in self._seen]
        self._deleted = len(missing)  # ids (a chunked table's: documents), for counts()
        if self._rows_of:
            return self._table_rows(replaced), self._table_rows(missing)
        return replaced, missing

    def _table_rows(self, doc_ids: Sequence[Any]) -> list[str]:
        return [row for doc in doc_ids for row in self._rows_of[doc]]

    def size(self) -> int:
        return len(self._owner)
