"""``embedjob gc``: staging folders of finished or abandoned runs, old Lance versions, unused calibrations."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import lance

from ._calibrations import calibration_uri, list_calibrations
from ._files import filesystem
from ._lance_io import read_provenance, sibling_uri, table_exists
from ._lock import TableLock
from ._migration import MIGRATION_KEY, MigrationState
from ._provenance import METADATA_KEY, Provenance
from ._staging import StagingRecord, staged_runs
from ._table import TableNotFoundError
from ._tags import drop_old_run_tags

__all__ = ["GcReport", "collect_garbage"]

logger = logging.getLogger("storage")


@dataclass
class GcReport:
    staging_removed: list[str] = field(default_factory=list)
    #: resumable runs younger than the retention, and committed runs whose bookkeeping is pending
    staging_kept: list[str] = field(default_factory=list)
    versions_removed: dict[str, int] = field(default_factory=dict)  # per dataset (table, runs, rejects)
    bytes_removed: int = 0
    calibrations_removed: list[str] = field(default_factory=list)
    #: run tags of versions older than the retention (Lance never removes a tagged version)
    tags_removed: list[str] = field(default_factory=list)


def collect_garbage(
    table_uri: str,
    *,
    older_than: timedelta = timedelta(days=7),
    storage_options: Mapping[str, str] | None = None,
    wait_s: float = 0.0,
) -> GcReport:
    """Clean up around a table while holding its lock (no run can be staging meanwhile).

    - staging folders: removed when their run committed, can no longer be
      resumed (the table moved past the version it planned against), or is
      older than ``older_than``; kept otherwise (``embedjob resume`` can
      still finish them), and kept while a committed run's bookkeeping (its
      runs-table record, its rejects) is pending.
    - Lance versions older than ``older_than`` of the table, its runs and its
      rejects are removed (the newest version always stays). Files no version
      references (fragments of abandoned runs) go too when no staged run is kept.
      A tagged version is never removed: the run tags of the table's versions
      older than ``older_than`` are deleted first; ``latest-good``, tags of other
      names and the tags on the newest version stay, and so do their versions.
    - calibration files no remaining version uses and older than ``older_than``.
    """
    opts = dict(storage_options or {}) or None
    _check_embedjob_table(table_uri, opts)
    report = GcReport()
    lock = TableLock(table_uri, run_id="gc", storage_options=opts)
    lock.acquire(wait_s=wait_s)
    try:
        ds = lance.dataset(table_uri, storage_options=opts)
        now = datetime.now(UTC)
        _clean_staging(table_uri, opts, int(ds.version), now, older_than, report)
        report.tags_removed = drop_old_run_tags(table_uri, _cutoff(now, older_than), opts)
        _clean_versions(table_uri, opts, older_than, report)
        _clean_calibrations(table_uri, opts, now, older_than, report)
    finally:
        lock.release()
    return report


def _cutoff(now: datetime, older_than: timedelta) -> datetime:
    """``now - older_than``, or the earliest time there is for a retention longer than the calendar."""
    try:
        return now - older_than
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


def _check_embedjob_table(table_uri: str, opts: dict[str, str] | None) -> None:
    """Raise unless ``table_uri`` is a table embedjob wrote."""
    # only around a table embedjob wrote: a "<stem>_staging" folder next to anything else is not ours to delete
    if read_provenance(table_uri, opts) is None:
        what = "is a Lance dataset embedjob did not write" if table_exists(table_uri, opts) else "is not a table"
        raise TableNotFoundError(
            f"{table_uri!r} {what} (no embedjob provenance); gc cleans up only around embedjob tables"
        )


def _clean_staging(
    table_uri: str,
    opts: dict[str, str] | None,
    table_version: int,
    now: datetime,
    older_than: timedelta,
    report: GcReport,
) -> None:
    """Remove the staging folders of runs that committed, can no longer resume, or are too old."""
    for staging in staged_runs(table_uri, opts):
        record = staging.read_record() or StagingRecord(run_id=staging.run_id, status="")
        if record.bookkeeping_pending:
            # committed (or maybe: the table's commit message says), its bookkeeping not finished: the
            # job's next run or `embedjob resume RUN_ID` needs this record to write it
            report.staging_kept.append(staging.run_id)
            continue
        age = now - datetime.fromisoformat(record.started_at) if record.started_at else timedelta.max
        resumable = record.resume_problem(table_version) is None
        if resumable and age < older_than:
            report.staging_kept.append(staging.run_id)
        else:
            staging.remove()
            report.staging_removed.append(staging.run_id)


def _clean_versions(table_uri: str, opts: dict[str, str] | None, older_than: timedelta, report: GcReport) -> None:
    """Remove the old Lance versions of the table, its runs and its rejects; unreferenced files go too when no
    staged run was kept."""
    unverified = not report.staging_kept
    for suffix in ("", "runs", "rejects"):
        uri = sibling_uri(table_uri, suffix) if suffix else table_uri
        if suffix and not table_exists(uri, opts):
            continue
        stats = lance.dataset(uri, storage_options=opts).cleanup_old_versions(
            older_than=older_than, delete_unverified=unverified, error_if_tagged_old_versions=False
        )
        report.versions_removed[suffix or "table"] = int(stats.old_versions)
        report.bytes_removed += int(stats.bytes_removed)


def _calibrations_in_use(table_uri: str, opts: dict[str, str] | None) -> set[str | None]:
    """The calibration fingerprints the table's remaining versions name: in their provenance, and as the new
    settings of a migration in progress (``storage._migration``)."""
    used: set[str | None] = set()
    ds = lance.dataset(table_uri, storage_options=opts)
    for v in ds.versions():
        metadata = lance.dataset(table_uri, version=v["version"], storage_options=opts).schema.metadata or {}
        if metadata.get(METADATA_KEY):
            used.add(Provenance.from_json(metadata[METADATA_KEY]).calibration)
        if metadata.get(MIGRATION_KEY):
            used.add(MigrationState.from_json(metadata[MIGRATION_KEY]).to.calibration)
    return used


def _clean_calibrations(
    table_uri: str, opts: dict[str, str] | None, now: datetime, older_than: timedelta, report: GcReport
) -> None:
    """Remove the calibration files no remaining version uses and older than ``older_than``."""
    used = _calibrations_in_use(table_uri, opts)
    for cal in list_calibrations(table_uri, storage_options=opts):
        created = datetime.fromisoformat(cal.info.created_at)
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        if cal.fingerprint not in used and now - created >= older_than:
            _delete_calibration(table_uri, cal.fingerprint, opts)
            report.calibrations_removed.append(cal.fingerprint)


def _delete_calibration(table_uri: str, fingerprint: str, opts: dict[str, str] | None) -> None:
    """Delete a calibration's weights and its JSON beside them (either may be gone already)."""
    uri = calibration_uri(table_uri, fingerprint)
    fs, path = filesystem(uri, opts)
    for p in (path, path[: -len(".safetensors")] + ".json"):
        try:
            fs.delete_file(p)
        except FileNotFoundError:
            pass
