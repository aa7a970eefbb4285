"""A run's staging area: ``<table stem>_staging/<run_id>/``.

Workers write their rows as uncommitted Lance fragments (in the table's own
data folder) and then a small *part* file here naming those fragments and the
ids they hold. The driver commits every part in one Lance transaction at the
end. Parts are durable, so a run whose driver died can be finished later:
rows already staged are not embedded again.

::

    articles_staging/
      20261123T020000Z-1a2b3c4d/
        run.json              # the run's record: job, read version, status, heartbeat
        parts/<key>.json      # one per written batch; <key> is a digest of the batch's rows
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from ._files import delete_tree, list_dir, read_bytes, table_stem, write_bytes

__all__ = ["RunIdError", "RunStaging", "StagedPart", "is_run_id", "new_run_id", "staged_runs", "staging_dir"]

_RUN_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")


def new_run_id() -> str:
    """Sortable and unique: ``20261122T161500Z-1a2b3c4d``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def is_run_id(text: object) -> bool:
    """True for what :func:`new_run_id` makes, and nothing else (no paths, no dots, no newlines)."""
    return isinstance(text, str) and _RUN_ID.fullmatch(text) is not None


class RunIdError(ValueError):
    """Not a run id (``embedjob resume ../../x``)."""

    def __init__(self, value: object) -> None:
        self.value = value
        super().__init__(
            f"{value!r} is not a run id; run ids look like 20261122T161500Z-1a2b3c4d "
            f"(`embedjob inspect TABLE` lists a table's unfinished runs)"
        )

    def __reduce__(self):
        return (type(self), (self.value,))


def staging_dir(table_uri: str) -> str:
    """``out/articles.lance`` -> ``out/articles_staging``."""
    return f"{table_stem(table_uri)}_staging"


@dataclass
class StagedPart:
    """One written batch: its fragments and what they hold."""

    key: str
    fragments: list[str]
    ids: list[Any]
    tokens: int = 0
    truncated: int = 0
    reject_fragments: list[str] = field(default_factory=list)
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    #: Ray node id -> how many of ``ids`` an encoder actor on that node embedded (empty in parts
    #: written before nodes were recorded)
    nodes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str | bytes) -> StagedPart:
        """Reads parts of older and newer versions alike: missing fields take their defaults, fields
        this version does not know are ignored."""
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class RunStaging:
    """The staging folder of one run (local or ``s3://``, same store as the table)."""

    def __init__(self, table_uri: str, run_id: str, storage_options: Mapping[str, str] | None = None) -> None:
        if not is_run_id(run_id):  # the id becomes a path: never let it leave the staging folder
            raise RunIdError(run_id)
        self.table_uri = table_uri
        self.run_id = run_id
        self.uri = f"{staging_dir(table_uri)}/{run_id}"
        self.storage_options = dict(storage_options or {}) or None

    def __repr__(self) -> str:
        return f"RunStaging({self.uri!r})"

    # ----------------------------------------------------------------- record
    def write_record(self, record: Mapping[str, Any]) -> None:
        write_bytes(f"{self.uri}/run.json", json.dumps(dict(record), default=str).encode(), self.storage_options)

    def read_record(self) -> dict[str, Any] | None:
        try:
            return json.loads(read_bytes(f"{self.uri}/run.json", self.storage_options))
        except FileNotFoundError:
            return None

    def update_record(self, **changes: Any) -> dict[str, Any]:
        record = {**(self.read_record() or {}), **changes}
        self.write_record(record)
        return record

    # ----------------------------------------------------------------- parts
    def add_part(self, part: StagedPart) -> None:
        """Idempotent: a retried task writes the same key again (the newer fragments win)."""
        write_bytes(f"{self.uri}/parts/{part.key}.json", part.to_json().encode(), self.storage_options)

    def parts(self) -> list[StagedPart]:
        out = []
        for name in list_dir(f"{self.uri}/parts", self.storage_options):
            if name.endswith(".json"):
                out.append(StagedPart.from_json(read_bytes(f"{self.uri}/parts/{name}", self.storage_options)))
        return out

    def remove(self) -> None:
        delete_tree(self.uri, self.storage_options)


def staged_runs(table_uri: str, storage_options: Mapping[str, str] | None = None) -> list[RunStaging]:
    """Every run with a staging folder next to the table, oldest first (run ids sort by start time); other
    folders there are not embedjob's and are left alone."""
    return [
        RunStaging(table_uri, name, storage_options)
        for name in list_dir(staging_dir(table_uri), storage_options, dirs=True)
        if is_run_id(name)
    ]
