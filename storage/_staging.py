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
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from ._files import delete_tree, list_dir, read_bytes, table_stem, write_bytes

__all__ = [
    "RunIdError",
    "RunStaging",
    "RunStatus",
    "StagedPart",
    "StagingRecord",
    "is_run_id",
    "new_run_id",
    "rows_per_node",
    "staged_runs",
    "staging_dir",
]

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


class RunStatus(StrEnum):
    """Where a staged run got to (its staging record's ``status``)."""

    RUNNING = "running"
    COMMITTING = "committing"  # its summary is recorded; the commit may or may not have landed
    COMMITTED = "committed"  # the commit landed; bookkeeping may still be pending
    FAILED = "failed"


#: the bookkeeping after a commit, in order: each step is retried, and one that still fails stays pending in
#: the run's staging record for the job's next run (or ``embedjob resume RUN_ID``) to finish. "tags": the run's
#: tag on the version it made; "rejects": its rejected rows; "runs": its row in the runs table
AFTER_COMMIT = ("tags", "rejects", "runs")


@dataclass
class StagingRecord:
    """A run's ``run.json``: what it is (job, spec, mode, the version it planned against, what made its
    vectors) and where it got to."""

    run_id: str
    status: str = RunStatus.RUNNING
    job: str | None = None
    spec: dict[str, Any] | None = None
    mode: str | None = None
    read_version: int | None = None
    provenance: str | None = None  # the table provenance's JSON: what made the run's vectors
    started_at: str | None = None
    attempts: int = 1
    error: str | None = None
    failed_at: str | None = None
    #: the run's summary, recorded before its commit (a driver killed right after the commit leaves it)
    summary: dict[str, Any] | None = None
    #: this attempt's rejected rows' fragments, and the rejects table's version when the run committed
    rejects: list[str] = field(default_factory=list)
    rejects_version: int | None = None
    #: bookkeeping steps (AFTER_COMMIT) not done yet
    pending: list[str] = field(default_factory=lambda: list(AFTER_COMMIT))
    table_version: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], run_id: str) -> StagingRecord:
        """Reads records of older and newer versions alike: missing fields take their defaults, unknown ones
        are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        values.setdefault("run_id", run_id)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in asdict(self).items()}

    @property
    def bookkeeping_pending(self) -> bool:
        """Committed, or maybe (the table's commit message decides), with bookkeeping left: the job's next run
        or ``embedjob resume`` needs this record."""
        return self.status == RunStatus.COMMITTING or (self.status == RunStatus.COMMITTED and bool(self.pending))

    def resume_problem(
        self, table_version: int | None, *, provenance: str | None = None, mode: str | None = None
    ) -> str | None:
        """Why this run cannot be resumed against the table at ``table_version`` (and, when given, a job
        with this provenance and mode); None when it can. The one rule for ``run``, ``resume``, ``gc`` and
        ``inspect``: a run that did not commit, planned against the table's current version, with the
        same model, granularities and mode."""
        if self.status in (RunStatus.COMMITTED, RunStatus.COMMITTING):
            return f"it is {self.status}"
        if self.read_version != table_version:
            return (
                f"it planned against table version {self.read_version}, the table is at {table_version} "
                f"now (another run committed meanwhile)"
            )
        if provenance is not None and self.provenance != provenance:
            return "the job's model or granularities differ from the run's"
        if mode is not None and self.mode != mode:
            return f"the run used mode {self.mode!r}, this job {mode!r}"
        return None


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
    #: rows the fragments hold where ``ids`` are not listed (a backfill's part: one fragment's new columns)
    rows: int = 0
    #: a chunked table's part: the document id of each of ``ids`` (chunk ids), so a resume knows which
    #: chunks of which documents are staged
    doc_ids: list[Any] = field(default_factory=list)

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
    def write_record(self, record: StagingRecord) -> None:
        write_bytes(f"{self.uri}/run.json", json.dumps(record.to_json(), default=str).encode(), self.storage_options)

    def read_record(self) -> StagingRecord | None:
        try:
            data = json.loads(read_bytes(f"{self.uri}/run.json", self.storage_options))
        except FileNotFoundError:
            return None
        return StagingRecord.from_json(data, self.run_id)

    def update_record(self, **changes: Any) -> StagingRecord:
        """The record with ``changes`` (field names of :class:`StagingRecord`), written back."""
        record = replace(self.read_record() or StagingRecord(run_id=self.run_id), **changes)
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


def rows_per_node(parts: list[StagedPart]) -> dict[str, int]:
    """Ray node id -> rows the parts' encoder actors embedded there, the node with most rows first (ties by node
    id; parts staged before nodes were recorded count nowhere)."""
    total: dict[str, int] = {}
    for part in parts:
        for node, n in part.nodes.items():
            total[node] = total.get(node, 0) + n
    return dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))


def staged_runs(table_uri: str, storage_options: Mapping[str, str] | None = None) -> list[RunStaging]:
    """Every run with a staging folder next to the table, oldest first (run ids sort by start time); other
    folders there are not embedjob's and are left alone."""
    return [
        RunStaging(table_uri, name, storage_options)
        for name in list_dir(staging_dir(table_uri), storage_options, dirs=True)
        if is_run_id(name)
    ]
