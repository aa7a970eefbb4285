"""This machine's embedjob state: ``$EMBEDJOB_STATE_DIR`` (default ``~/.embedjob``).

``runs/<run_id>.json`` remembers which table and job file each run started
here belongs to (and the S3 endpoint, never keys), so ``embedjob resume RUN_ID`` needs nothing else. The run's
own durable record lives next to its table (the staging folder and the runs
table); this index is only a pointer to it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "lookup_run",
    "lookup_submission",
    "private_dir",
    "private_file",
    "remember_run",
    "remember_submission",
    "state_dir",
]


def state_dir() -> Path:
    return Path(os.environ.get("EMBEDJOB_STATE_DIR") or Path.home() / ".embedjob").expanduser()


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner can enter: the folders embedjob creates (the state dir and what is
    in it) are made 0700; a folder that exists already keeps its mode."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for created in missing:
        os.chmod(created, 0o700)
    return path


def private_file(path: Path, data: bytes) -> None:
    """Write ``path`` whole (a temporary file, then a rename), readable by its owner only (0600)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def remember_run(run_id: str, table_uri: str, job: str, storage: dict[str, Any] | None = None) -> None:
    """Best effort: a read-only home must not stop a run."""
    try:
        folder = private_dir(state_dir() / "runs")
        record = {"run_id": run_id, "table_uri": table_uri, "job": job, "storage": storage or {}}
        private_file(folder / f"{run_id}.json", json.dumps(record).encode())
    except OSError:
        pass


def remember_submission(submission_id: str, address: str, job: str) -> None:
    """Where a job was submitted (``status``, ``logs`` and ``stop`` find it again); best effort."""
    try:
        folder = private_dir(state_dir() / "submissions")
        record = {"submission_id": submission_id, "address": address, "job": job}
        private_file(folder / f"{_file_name(submission_id)}.json", json.dumps(record).encode())
    except OSError:
        pass


def lookup_submission(submission_id: str) -> str | None:
    """The Jobs API address ``submission_id`` was submitted to from this machine, if it was."""
    try:
        record = json.loads((state_dir() / "submissions" / f"{_file_name(submission_id)}.json").read_text())
    except (OSError, ValueError):
        return None
    return record.get("address") if record.get("submission_id") == submission_id else None


def _file_name(submission_id: str) -> str:
    """A file name for any id (Ray's are raysubmit_..., a user's may be anything): no path can leave the folder."""
    return hashlib.blake2b(submission_id.encode(), digest_size=16).hexdigest()


def lookup_run(run_id: str) -> dict[str, Any] | None:
    from storage import is_run_id

    if not is_run_id(run_id):  # it names a file here
        return None
    try:
        return json.loads((state_dir() / "runs" / f"{run_id}.json").read_text())
    except (OSError, ValueError):
        return None
