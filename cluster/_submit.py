"""Ray Jobs API: submit a command to a cluster with this project's packages, follow it, stop it.

A thin wrapper over ``ray.job_submission.JobSubmissionClient`` (which needs the dashboard,
``ray[default]``). It adds what the raw client lacks: an explicit address that wins over
``RAY_ADDRESS``, a connect timeout that names the address, the cluster's auth token, and
errors that say what to try. It knows nothing about job files: callers pass the files the
entrypoint needs as text.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ._connect import _PACKAGES, _module_dir, _use_token_auth_if_available
from ._errors import ClusterError

__all__ = [
    "TERMINAL_STATUSES",
    "RayJobInfo",
    "RayJobNotFoundError",
    "RayJobsClient",
    "build_runtime_env",
    "jobs_api_address",
]

#: Ray job statuses after which nothing changes.
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})

# Models load from local dirs on the cluster too: never reach for a hub.
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class RayJobNotFoundError(ClusterError, LookupError):
    """The cluster answered, and it has no job with that id."""


@dataclass(frozen=True)
class RayJobInfo:
    """What the cluster says about one submitted job. Times are Unix seconds."""

    submission_id: str
    status: str  # PENDING | RUNNING | STOPPED | SUCCEEDED | FAILED
    message: str = ""
    entrypoint: str = ""
    start_time: float | None = None
    end_time: float | None = None
    driver_exit_code: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


def jobs_api_address(address: str | None = None) -> str:
    """The Jobs API URL to use: ``address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``
    when it is an http(s) URL. A bare ``host:port`` means ``http://host:port``.

    >>> jobs_api_address("127.0.0.1:8265")
    'http://127.0.0.1:8265'
    """
    origin = "--address"
    if not address:
        origin, address = "RAY_API_SERVER_ADDRESS", os.environ.get("RAY_API_SERVER_ADDRESS") or None
    if not address:
        ray_address = os.environ.get("RAY_ADDRESS", "")
        if ray_address.startswith(("http://", "https://")):
            origin, address = "RAY_ADDRESS", ray_address
        else:
            seen = f" (RAY_ADDRESS is {ray_address!r}, not an http(s):// URL)" if ray_address else ""
            raise ClusterError(
                "no Ray Jobs API address: pass --address http://HEAD:8265 (the head node's dashboard), "
                f"or set RAY_API_SERVER_ADDRESS{seen}"
            )
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = f"http://{address}"
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ClusterError(
            f"{origin} {address!r} is not a Ray Jobs API address: expected the dashboard's http(s)://HOST:PORT "
            f"(default port 8265), not a Ray client (ray://) or GCS address"
        )
    return address


def build_runtime_env(
    *,
    working_dir: str | os.PathLike[str] | None = None,
    py_modules: Sequence[str | os.PathLike[str]] = (),
    env_vars: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The runtime env a submitted job runs in: this project's packages (embedder, storage,
    cluster, plus ``py_modules``, e.g. the caller's own package dir), offline model loading,
    and optionally a working dir (uploaded; the entrypoint starts there)."""
    modules = [_module_dir(name) for name in _PACKAGES] + [str(Path(m)) for m in py_modules]
    env: dict[str, Any] = {"py_modules": list(dict.fromkeys(modules)), "env_vars": {**_OFFLINE_ENV, **(env_vars or {})}}
    if working_dir is not None:
        env["working_dir"] = str(working_dir)
    return env


class RayJobsClient:
    """Submit, inspect, follow and stop jobs through a cluster's Jobs API.

    >>> client = RayJobsClient("http://head:8265")  # doctest: +SKIP
    >>> sid = client.submit("python -m jobs.cli run job.toml", files={"job.toml": text})  # doctest: +SKIP
    >>> client.wait(sid).status  # doctest: +SKIP
    'SUCCEEDED'

    The address is checked (a TCP connect within ``timeout_s``) when the client is built. A server
    that accepts the connection gets ``answer_timeout_s`` to answer each request: a busy dashboard
    storing uploaded packages and starting the job's supervisor can take tens of seconds.
    """

    def __init__(self, address: str | None = None, *, timeout_s: float = 10.0, answer_timeout_s: float = 120.0) -> None:
        for name, value in (("timeout_s", timeout_s), ("answer_timeout_s", answer_timeout_s)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.address = jobs_api_address(address)
        self.timeout_s = timeout_s
        self.answer_timeout_s = answer_timeout_s
        _probe_http(self.address, timeout_s)
        _use_token_auth_if_available()
        with self._calls():
            self._client = _client_class()(self.address, timeout=(timeout_s, answer_timeout_s))

    def submit(
        self,
        entrypoint: str,
        *,
        files: Mapping[str, str] | None = None,
        py_modules: Sequence[str | os.PathLike[str]] = (),
        env_vars: Mapping[str, str] | None = None,
        submission_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Submit ``entrypoint`` (a shell command run on the head node); returns the submission id.

        ``files`` (name -> text) are written to a temporary working dir that travels with the job.
        """
        tmp = tempfile.mkdtemp(prefix="embedjob-submit-") if files else None
        try:
            if tmp is not None:
                for name, text in (files or {}).items():
                    if Path(name).name != name:
                        raise ValueError(f"file names must be plain names (no directories), got {name!r}")
                    Path(tmp, name).write_text(text, encoding="utf-8")
            runtime_env = build_runtime_env(working_dir=tmp, py_modules=py_modules, env_vars=env_vars)
            # A head node that has just started answers before its dashboard agent is up ("No available
            # agent to submit job, please try again later"): nothing was submitted, so try again a while.
            deadline = time.monotonic() + self.answer_timeout_s
            while True:
                try:
                    with self._calls():
                        return self._client.submit_job(
                            entrypoint=entrypoint,
                            runtime_env=runtime_env,
                            submission_id=submission_id,
                            metadata=dict(metadata or {}),
                        )
                except ClusterError as exc:
                    if "No available agent" not in str(exc):
                        raise
                    if time.monotonic() > deadline:
                        raise ClusterError(
                            f"{exc} Tried for {self.answer_timeout_s:g} s: the head node's dashboard agent is not up "
                            f"(its port, --dashboard-agent-listen-port, 52365 by default, may be held by another Ray)"
                        ) from None
                time.sleep(2.0)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def info(self, submission_id: str) -> RayJobInfo:
        with self._calls(submission_id):
            raw = self._client.get_job_info(submission_id)
        return RayJobInfo(
            submission_id=raw.submission_id or submission_id,
            status=str(getattr(raw.status, "value", raw.status)),
            message=raw.message or "",
            entrypoint=raw.entrypoint or "",
            start_time=raw.start_time / 1000 if raw.start_time else None,
            end_time=raw.end_time / 1000 if raw.end_time else None,
            driver_exit_code=raw.driver_exit_code,
            metadata=dict(raw.metadata or {}),
        )

    def logs(self, submission_id: str) -> str:
        """Everything the job's entrypoint has printed so far."""
        with self._calls(submission_id):
            return self._client.get_job_logs(submission_id)

    def follow(self, submission_id: str) -> Iterator[str]:
        """The job's output as it comes, from the start; ends when the job does."""
        self.info(submission_id)  # a clear error for an unknown id before the websocket opens
        loop = asyncio.new_event_loop()
        chunks = self._client.tail_job_logs(submission_id)
        try:
            while True:
                with self._calls(submission_id):
                    try:
                        chunk = loop.run_until_complete(chunks.__anext__())
                    except StopAsyncIteration:
                        return
                yield chunk
        finally:
            loop.run_until_complete(chunks.aclose())
            loop.close()

    def stop(self, submission_id: str) -> bool:
        """Ask the job to stop (SIGTERM, then SIGKILL after Ray's grace period); False if it had already ended."""
        with self._calls(submission_id):
            return bool(self._client.stop_job(submission_id))

    def wait(self, submission_id: str, *, timeout_s: float | None = None, poll_s: float = 1.0) -> RayJobInfo:
        """Poll until the job reaches a terminal status (or ``timeout_s`` passes); returns the last info."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            info = self.info(submission_id)
            if info.finished or (deadline is not None and time.monotonic() >= deadline):
                return info
            time.sleep(poll_s)

    @contextmanager
    def _calls(self, submission_id: str | None = None) -> Iterator[None]:
        """Ray's own address variables must not override ours, and its errors become ours."""
        import requests
        from ray.exceptions import AuthenticationError

        saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
        try:
            yield
        except requests.exceptions.Timeout:
            raise ClusterError(
                f"the Ray Jobs API at {self.address!r} did not answer within {self.answer_timeout_s:g} s"
            ) from None
        except (OSError, requests.exceptions.ConnectionError) as exc:
            raise ClusterError(
                f"cannot reach the Ray Jobs API at {self.address!r}: {exc} "
                f"(is that the dashboard's port, 8265 by default?)"
            ) from None
        except AuthenticationError as exc:
            raise ClusterError(
                f"the Ray Jobs API at {self.address!r} refused us: {str(exc).splitlines()[0]} "
                f"(put the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN)"
            ) from None
        except RuntimeError as exc:
            if submission_id is not None and "status code 404" in str(exc):
                raise RayJobNotFoundError(f"no Ray job {submission_id!r} at {self.address}") from None
            raise ClusterError(f"Ray Jobs API at {self.address}: {exc}") from None
        finally:
            os.environ.update(saved)


def _probe_http(url: str, timeout: float) -> None:
    """Fail fast, naming the address, where nothing listens (a bare client waits on the OS)."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        raise ClusterError(
            f"cannot reach the Ray Jobs API at {url!r} ({reason}, waited up to {timeout:g} s); is the head node's "
            f"dashboard running there (`ray start --head --dashboard-host=0.0.0.0`, port 8265 by default)?"
        ) from None


def _client_class() -> type:
    """JobSubmissionClient with (connect, answer) timeouts on every request (Ray's has none)."""
    from ray.job_submission import JobSubmissionClient

    class _TimedClient(JobSubmissionClient):
        def __init__(self, address: str, *, timeout: tuple[float, float]) -> None:
            self._timeout = timeout
            super().__init__(address)

        def _do_request(self, method: str, endpoint: str, **kwargs: Any):
            kwargs.setdefault("timeout", self._timeout)
            return super()._do_request(method, endpoint, **kwargs)

    return _TimedClient
