"""This machine's embedjob state: ``$EMBEDJOB_STATE_DIR`` (default ``~/.embedjob``).

``runs/<run_id>.json`` remembers which table and job file each run started
here belongs to (and the S3 endpoint, never keys), so ``embedjob resume RUN_ID`` needs nothing else. The run's
own durable record lives next to its table (the staging folder and the runs
table); this index is only a pointer to it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["lookup_run", "remember_run", "state_dir"]


def state_dir() -> Path:
    return Path(os.environ.get("EMBEDJOB_STATE_DIR") or Path.home() / ".embedjob").expanduser()


def remember_run(run_id: str, table_uri: str, job: str, storage: dict[str, Any] | None = None) -> None:
    """Best effort: a read-only home must not stop a run."""
    folder = state_dir() / "runs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{run_id}.json.tmp"
        tmp.write_text(json.dumps({"run_id": run_id, "table_uri": table_uri, "job": job, "storage": storage or {}}))
        tmp.replace(folder / f"{run_id}.json")
    except OSError:
        pass


def lookup_run(run_id: str) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir() / "runs" / f"{run_id}.json").read_text())
    except (OSError, ValueError):
        return None
