"""Submitting a job file to a Ray cluster through the Jobs API.

The job file travels as text in the job's working dir, its relative paths already made absolute
here (on the submitting side), and the cluster runs ``python -m jobs.cli run`` on it against
itself (``--address auto``). The four packages travel in the runtime env.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ._spec import JobSpec, load_job, parse_job
from .state import remember_submission

#: the environment variable naming the file a run writes its summary to (the scheduler reads it); ``-``: print
#: it as its output's last line, after SUMMARY_LINE (a run on a cluster: whoever submitted it reads its log)
SUMMARY_FILE_ENV = "EMBEDJOB_SUMMARY_FILE"
SUMMARY_LINE = "embedjob summary: "

__all__ = [
    "SUMMARY_FILE_ENV",
    "SUMMARY_LINE",
    "Submission",
    "entrypoint",
    "is_loopback",
    "job_text",
    "local_paths",
    "submit_job",
]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Submission:
    submission_id: str
    address: str  # the Jobs API URL it went to
    job: str  # the job file, as given


def job_text(spec: JobSpec) -> str:
    """The job as TOML: what the user set (after ``load_job`` made its paths absolute), nothing else."""
    data = spec.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    text = _toml(data)
    if parse_job(tomllib.loads(text), source="submitted job") != spec:  # a guard against a lossy round trip
        raise RuntimeError(f"the job did not survive its round trip through TOML:\n{text}")
    return text


def local_paths(spec: JobSpec) -> list[str]:
    """The job's paths on a local file system: the cluster must see them at the same place."""
    model = [spec.model.path] if Path(spec.model.path).expanduser().is_absolute() else []  # else a model's name
    paths = [spec.input.uri, *model, spec.output.uri]
    if spec.calibration and spec.calibration != "auto":
        paths.append(spec.calibration)
    return [p for p in paths if "://" not in p]


def submit_job(
    job: str | Path,
    *,
    address: str | None = None,
    python: str = "python",
    submission_id: str | None = None,
    metadata: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> Submission:
    """Validate ``job`` here, then submit it; returns as soon as the cluster has accepted it.

    ``python`` is the interpreter on the cluster's head node that has Ray and the project's
    dependencies (``python`` on its PATH by default).
    """
    from cluster import RayJobsClient

    spec = load_job(job)  # a bad job file fails here, before anything reaches the cluster
    name = Path(job).name if Path(job).suffix == ".toml" else "job.toml"
    client = RayJobsClient(address, timeout_s=timeout_s)
    sid = client.submit(
        entrypoint(name, python=python),
        files={name: job_text(spec)},
        py_modules=[os.path.dirname(os.path.abspath(__file__))],
        submission_id=submission_id,
        metadata={"embedjob_job": str(Path(job).resolve()), **(metadata or {})},
    )
    remember_submission(sid, client.address, str(job))
    return Submission(submission_id=sid, address=client.address, job=str(job))


def entrypoint(job_name: str, *, python: str = "python") -> str:
    """The command the cluster runs: the job against the cluster it runs on, its summary printed as the log's
    last line for whoever submitted it (``schedule list`` shows a fired run's counts from it)."""
    run = f"{python} -m jobs.cli run {shlex.quote(job_name)} --address auto --no-progress"
    return f"{SUMMARY_FILE_ENV}=- {run}"


def is_loopback(address: str) -> bool:
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def _toml(data: dict[str, Any]) -> str:
    """A TOML writer for what a job holds: scalars, lists, and one level of tables."""
    head = [f"{_key(k)} = {_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    lines = [*head, ""] if head else []
    for section, values in data.items():
        if isinstance(values, dict):
            lines.append(f"[{_key(section)}]")
            lines.extend(f"{_key(k)} = {_value(v)}" for k, v in values.items())
            lines.append("")
    return "\n".join(lines)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return {"nan": "nan", "inf": "inf", "-inf": "-inf"}[repr(value)]
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")
