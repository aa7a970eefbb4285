"""Version tags and rollback.

Every committed run tags the table version it made with its run id (:func:`tag_run`), and a run that passed
its checks moves the ``latest-good`` tag to its version (:func:`move_latest_good`; the job layer decides
what passing means). :func:`rollback_table` restores a tagged or numbered version's contents as one new
version: nothing is deleted, every version stays readable.

Tags are Lance tags (``<table>/_refs/tags/<name>.json``). Lance's version clean-up never removes a tagged
version, so ``embedjob gc`` first drops the run tags of versions past its retention
(:func:`drop_old_run_tags`); ``latest-good`` and tags of other names (an operator's own) stay, and so do
their versions.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import lance

from ._lance_io import commit_message, commit_operation
from ._lock import TableLock
from ._messages import error_line
from ._provenance import METADATA_KEY
from ._runs import RunRecord, record_run
from ._staging import RunIdError, is_run_id, new_run_id

__all__ = [
    "LATEST_GOOD",
    "RollbackError",
    "RollbackReport",
    "TagError",
    "drop_old_run_tags",
    "move_latest_good",
    "rollback_table",
    "run_tag",
    "table_tags",
    "tag_run",
]

#: the tag on the newest version made by a run that passed its checks (never moved back to an older version)
LATEST_GOOD = "latest-good"


class TagError(RuntimeError):
    """A tag cannot be set as asked (a run's tag already names another version)."""


class RollbackError(ValueError):
    """A rollback that cannot be done as asked: the message names the value and what the table has."""


def run_tag(run_id: str) -> str:
    """The tag of the version run ``run_id`` made: the run id itself.

    Lance tag names may hold letters, digits, ``.``, ``-`` and ``_`` (no ``..``, not ending in ``.lock``); a
    run id (``20261206T005710Z-fd887da2``) is made of those alone, and nothing else is taken as a run id.
    """
    if not is_run_id(run_id):
        raise RunIdError(run_id)
    return run_id


def _dataset(uri: str, storage_options: Mapping[str, str] | None) -> lance.LanceDataset:
    return lance.dataset(uri, storage_options=dict(storage_options or {}) or None)


def table_tags(uri: str, storage_options: Mapping[str, str] | None = None) -> dict[str, int]:
    """The table's tags, name -> version: ``latest-good`` first, then the newest version first."""
    return tags_of(_dataset(uri, storage_options))


def tags_of(dataset: lance.LanceDataset) -> dict[str, int]:
    """:func:`table_tags` of an opened dataset."""
    found = {name: int(tag["version"]) for name, tag in dataset.tags.list().items()}
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != LATEST_GOOD, -kv[1], kv[0])))


def tag_run(uri: str, run_id: str, version: int, storage_options: Mapping[str, str] | None = None) -> str:
    """Tag ``version`` with run ``run_id``'s tag; returns the tag. Idempotent: the tag already there on the same
    version (an earlier attempt's) is fine; on another version it is a :class:`TagError`."""
    ds = _dataset(uri, storage_options)
    name = run_tag(run_id)
    have = ds.tags.list().get(name)
    if have is None:
        ds.tags.create(name, int(version))
    elif int(have["version"]) != int(version):
        raise TagError(
            f"tag {name} of {uri!r} names version {have['version']}, but run {run_id} committed version {version}; "
            f"the tag was left as it is"
        )
    return name


def move_latest_good(uri: str, version: int, storage_options: Mapping[str, str] | None = None) -> int:
    """Point ``latest-good`` at ``version`` unless it names a newer one already (a late bookkeeping never moves
    it back); returns the version it names now."""
    ds = _dataset(uri, storage_options)
    have = ds.tags.list().get(LATEST_GOOD)
    if have is None:
        ds.tags.create(LATEST_GOOD, int(version))
        return int(version)
    if int(have["version"]) >= int(version):
        return int(have["version"])
    ds.tags.update(LATEST_GOOD, int(version))
    return int(version)


def drop_old_run_tags(uri: str, older_than_cutoff: datetime, storage_options: Mapping[str, str] | None = None):
    """Delete the run tags of versions made before ``older_than_cutoff`` (an aware datetime), so that the
    version clean-up after it can remove those versions. Kept: ``latest-good`` and tags that are not run ids
    (an operator's), and the run tags of the versions those name or of the newest version: those versions stay
    anyway. Returns the deleted tags' names."""
    ds = _dataset(uri, storage_options)
    made = {int(v["version"]): _aware(v["timestamp"]) for v in ds.versions()}
    tags = tags_of(ds)
    kept = {int(ds.version)} | {version for name, version in tags.items() if not is_run_id(name)}
    dropped = []
    for name, version in tags.items():
        if is_run_id(name) and version not in kept and made.get(version, older_than_cutoff) < older_than_cutoff:
            ds.tags.delete(name)
            dropped.append(name)
    return dropped


def _aware(stamp: datetime) -> datetime:
    """Lance's version timestamps are naive local times."""
    return stamp.astimezone(UTC) if stamp.tzinfo is None else stamp


# --------------------------------------------------------------------------------------------------- rollback


@dataclass(frozen=True)
class RollbackReport:
    """What a rollback did: the table went from ``from_version`` to ``version``, holding ``target_version``'s
    contents."""

    table_uri: str
    run_id: str
    to: str  # as asked: a tag or a version number
    target_version: int
    from_version: int
    version: int
    rows_before: int
    rows_after: int
    tags: tuple[str, ...] = ()
    #: bookkeeping after the restore that could not be done (the restore itself stands)
    warnings: tuple[str, ...] = ()

    @property
    def mode(self) -> str:
        """How the runs table names the rollback: ``rollback to latest-good (version 3)``, ``rollback to
        version 3``."""
        return rollback_mode(self.to, self.target_version)

    def describe(self) -> str:
        return (
            f"{self.table_uri}: version {self.from_version} ({self.rows_before:,} rows) -> version {self.version} "
            f"({self.rows_after:,} rows), the contents of version {self.target_version}"
            + (f" (tag {self.to})" if self.to != str(self.target_version) else "")
        )


def rollback_mode(to: str, target_version: int) -> str:
    return (
        f"rollback to version {target_version}"
        if to == str(target_version)
        else f"rollback to {to} (version {target_version})"
    )


def rollback_table(
    uri: str, to: str | int, *, storage_options: Mapping[str, str] | None = None, wait_s: float = 0.0
) -> RollbackReport:
    """Restore the contents of the version tagged ``to`` (or numbered ``to``) as one new version, under the
    table's lock (waiting up to ``wait_s`` for a run). A name that is a tag is the tag, else digits are a
    version number. Nothing is deleted: every version, the rolled-back ones too, stays readable until
    ``embedjob gc``. The new version gets the rollback's own run tag and ``latest-good`` (the operator chose
    its contents), and a row in the runs table (status committed, mode ``rollback to ...``).

    Refused with :class:`RollbackError`, naming what the table has: a tag or version it does not have (or no
    longer has: removed by ``embedjob gc``), the version it is at already, a version embedjob did not write.
    """
    opts = dict(storage_options or {}) or None
    run_id = new_run_id()
    lock = TableLock(uri, run_id=run_id, storage_options=opts)
    lock.acquire(wait_s=wait_s)
    try:
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        ds = _dataset(uri, opts)
        target, label = _resolve(ds, uri, to)
        current = int(ds.version)
        if target == current:
            named = "" if label == str(current) else f" (tag {label})"
            raise RollbackError(f"{uri!r} is at version {current}{named} already; nothing to roll back")
        old = ds.checkout_version(target)
        if not (old.schema.metadata or {}).get(METADATA_KEY):
            raise RollbackError(f"version {target} of {uri!r} was not written by embedjob (no provenance)")
        rows_before, rows_after = int(ds.count_rows()), int(old.count_rows())
        lock.check()
        version = commit_operation(
            uri,
            lance.LanceOperation.Restore(target),
            read_version=current,
            storage_options=opts,
            message=commit_message(run_id),
        )
        # ---- committed: what follows is bookkeeping, and a failure of it a warning
        report = RollbackReport(uri, run_id, label, target, current, version, rows_before, rows_after)
        return _after_rollback(report, started, time.perf_counter() - t0, opts)
    finally:
        lock.release()


def _resolve(ds: lance.LanceDataset, uri: str, to: str | int) -> tuple[int, str]:
    """The version ``to`` names, and ``to`` as the runs table will name it (a tag, or the version number)."""
    tags = tags_of(ds)
    name = str(to).strip()
    if not isinstance(to, int) and name in tags:
        return tags[name], name
    versions = sorted(int(v["version"]) for v in ds.versions())
    tagged = ", ".join(f"{t} (version {v})" for t, v in tags.items()) or "none"
    have = f"(it has versions {_ranges(versions)}; tags: {tagged})"
    if not (isinstance(to, int) or name.isdigit()):
        raise RollbackError(f"{uri!r} has no tag {name!r}; give a tag or a version number {have}")
    version = int(name)
    if version in versions:
        return version, str(version)
    if 1 <= version < versions[0]:
        raise RollbackError(
            f"version {version} of {uri!r} is gone: `embedjob gc` removed it (it removes versions older than its "
            f"--older-than that no tag holds); the oldest version left is {versions[0]} {have}"
        )
    raise RollbackError(f"{uri!r} has no version {to!r} {have}")


def _ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 5, 7, 8]`` -> ``1-3, 5, 7-8``."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _after_rollback(
    report: RollbackReport, started: datetime, seconds: float, opts: dict[str, Any] | None
) -> RollbackReport:
    """The rollback's run tag, ``latest-good`` and its row in the runs table; each failure becomes a warning."""
    uri, run_id, version = report.table_uri, report.run_id, report.version
    tags: list[str] = []
    warnings: list[str] = []

    def own_tag() -> None:
        tags.append(tag_run(uri, run_id, version, opts))

    def latest_good() -> None:
        if move_latest_good(uri, version, opts) == version:
            tags.append(LATEST_GOOD)

    def runs_row() -> None:
        row = RunRecord(
            run_id=run_id,
            job_name="rollback",
            table_uri=uri,
            mode=report.mode,
            status="committed",
            table_version=version,
            started_at=started,
            finished_at=datetime.now(UTC),
            seconds=seconds,
            read_version=report.from_version,
        )
        record_run(uri, row, opts)

    for what, step in (("its tag", own_tag), (LATEST_GOOD, latest_good), ("its row in the runs table", runs_row)):
        try:
            step()
        except Exception as exc:  # the restore is committed: it stands
            warnings.append(
                f"the rollback committed version {version}, but {what} could not be written ({error_line(exc)})"
            )
    return replace(report, tags=tuple(tags), warnings=tuple(warnings))
