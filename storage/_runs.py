"""The runs table (``<stem>_runs.lance``): one typed row per run, and its schema.

A run's row is written once, after its commit (or when it fails or is abandoned); ``inspect``, the
table's ``versions()`` and ``runs()`` read it back. The driver-only figures of a run (its indexes,
rows per node, warnings) live in the job layer's summary, which extends :class:`RunRecord`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from importlib import metadata
from typing import Any

import pyarrow as pa

from ._lance_io import append_rows, read_rows, sibling_uri, table_exists

__all__ = ["RUNS_SCHEMA", "VERSION", "RunRecord", "record_run"]

try:
    #: embedjob's version (pyproject.toml is its one home), recorded with every run
    VERSION = metadata.version("embedjob")
except metadata.PackageNotFoundError:  # a checkout on sys.path without being installed
    VERSION = "0+unknown"

RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("job_name", pa.string()),
        ("table_uri", pa.string()),
        ("mode", pa.string()),
        ("status", pa.string()),
        ("table_version", pa.int64()),
        ("rows_read", pa.int64()),
        ("rows_embedded", pa.int64()),
        ("rows_rejected", pa.int64()),
        ("tokens", pa.int64()),
        ("truncated", pa.int64()),
        ("seconds", pa.float64()),
        ("seconds_pipeline", pa.float64()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("pool", pa.string()),
        ("reject_reasons", pa.string()),
        ("embedjob_version", pa.string()),
        ("rows_new", pa.int64()),
        ("rows_changed", pa.int64()),
        ("rows_unchanged", pa.int64()),
        ("rows_deleted", pa.int64()),
        ("rows_resumed", pa.int64()),
        ("read_version", pa.int64()),
        ("error", pa.string()),
        ("rows_migrated", pa.int64()),
    ]
)


@dataclass
class RunRecord:
    """One run as the runs table holds it (``status``: committed, failed or abandoned)."""

    run_id: str
    job_name: str
    table_uri: str
    mode: str
    status: str
    table_version: int | None
    started_at: datetime
    finished_at: datetime
    rows_read: int = 0
    rows_embedded: int = 0
    rows_rejected: int = 0
    tokens: int = 0
    truncated: int = 0
    seconds: float = 0.0
    seconds_pipeline: float = 0.0
    pool: str = ""
    reject_reasons: dict[str, int] = field(default_factory=dict)
    rows_new: int = 0
    rows_changed: int = 0
    rows_unchanged: int = 0  # incremental: same content hash as the table's row; not touched
    rows_deleted: int = 0  # incremental with delete_missing: ids that left the input
    rows_resumed: int = 0  # staged by an earlier attempt of this run and committed now, not embedded again
    read_version: int | None = None  # the table version the run planned against
    error: str | None = None
    rows_migrated: int = 0  # a migration step: old rows re-embedded with the new settings

    def row(self) -> pa.Table:
        """The run as one row of the runs table."""
        values: dict[str, Any] = {k: v for k, v in asdict(self).items() if k in RUNS_SCHEMA.names}
        values["reject_reasons"] = json.dumps(self.reject_reasons)
        values["embedjob_version"] = VERSION
        return pa.Table.from_pylist([values], schema=RUNS_SCHEMA)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (kept in the staging record across the commit)."""
        data = asdict(self)
        for key in ("started_at", "finished_at"):
            data[key] = data[key].isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]):
        """Reads records of older and newer versions alike: unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("started_at", "finished_at"):
            values[key] = datetime.fromisoformat(values[key])
        return cls(**values)


def record_run(table_uri: str, record: RunRecord, storage_options: Mapping[str, str] | None = None) -> bool:
    """``record`` as a row of the table's runs table, once: a committed row of the same run already there (an
    earlier attempt's, whose answer was lost) is not written again. Returns whether a row was written."""
    uri = sibling_uri(table_uri, "runs")
    if table_exists(uri, storage_options) and any(
        r["run_id"] == record.run_id and r["status"] == "committed"
        for r in read_rows(uri, ["run_id", "status"], storage_options=storage_options)
    ):
        return False
    append_rows(uri, record.row(), storage_options=storage_options)
    return True
