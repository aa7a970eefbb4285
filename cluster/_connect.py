"""Connecting to Ray: an embedded local Ray by default, or an existing cluster."""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from ._errors import ClusterError
from ._progress import verbose_output
from ._timing import timed

__all__ = ["probe_address", "ray_session"]

logger = logging.getLogger("cluster")

# Ray starts its processes with fork and exec: nothing of Lance or LanceDB runs in the forked child before the
# exec, so their fork warnings at each start (two to five lines a run) say nothing here.
warnings.filterwarnings("ignore", message="lance is not fork-safe", category=UserWarning)
warnings.filterwarnings("ignore", message="lancedb fork support is experimental", category=RuntimeWarning)

# Packages a remote cluster needs from this checkout (runtime_env py_modules).
_PACKAGES = ("embedder", "storage", "cluster")


@contextmanager
def ray_session(address: str | None = None, *, connect_timeout_s: float = 15.0) -> Iterator[bool]:
    """Make sure Ray is up for the body; yields True when this call started it.

    - Ray already initialised in this process (a notebook, a test fixture): used as is.
    - ``address`` or ``RAY_ADDRESS``: join that cluster, shipping the project's
      packages in the runtime env. A ``host:port`` that doesn't answer fails
      within ``connect_timeout_s`` instead of retrying for minutes.
    - neither: start an embedded local Ray for the job and stop it afterwards.
    """
    import ray

    if ray.is_initialized():
        yield False
        return
    addr = address or os.environ.get("RAY_ADDRESS") or None
    if addr and addr not in ("auto", "local"):
        probe_address(addr, connect_timeout_s)
    started = False
    if addr and addr != "local":
        _use_token_auth_if_available()
    try:
        if addr and addr != "local":
            ray.init(
                address=addr,
                runtime_env=None if _in_submitted_job() else {"py_modules": [_module_dir(m) for m in _PACKAGES]},
                log_to_driver=True,
                logging_level=logging.WARNING,
            )
        else:
            with timed("Ray start"), _loopback_only(), _preloaded_workers():
                ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
        started = True
    except ConnectionError as exc:
        raise ClusterError(
            f"cannot connect to Ray at {addr!r}: {exc}. If the cluster uses token authentication "
            f"(the default for clusters started by Ray >= 2.5x), make its token available here: "
            f"~/.ray/auth_token or RAY_AUTH_TOKEN, with RAY_AUTH_MODE=token"
        ) from None
    if not verbose_output():
        spend_actor_restart_notice()
    try:
        yield started
    finally:
        if started:
            with timed("Ray stop"):
                ray.shutdown()


#: the one line of Ray's C++ core that :func:`spend_actor_restart_notice` keeps off the terminal
_RESTART_NOTICE = b"has constructor arguments in the object store and max_restarts > 0"
_notice_spent = False


def spend_actor_restart_notice() -> None:
    """Keep Ray's "Actor ... has constructor arguments in the object store and max_restarts > 0" line
    (E-level, from ``core_worker.cc``) off the terminal of every run.

    The driver's Ray core prints it when it creates a restartable actor whose constructor takes an object
    reference, which every Ray Data actor pool does (its context and its transformer go by reference,
    ray-project/ray#57733): nothing the user did or can change. Ray prints it once per process, from C++
    straight to file descriptor 2, past Python's logging. So once per process, right after connecting, a
    throwaway actor of that kind is created and killed while fd 2 points at a temporary file; whatever else
    landed there in that moment is written back. ``embedjob -v`` leaves the line alone.
    """
    global _notice_spent
    if _notice_spent:
        return
    _notice_spent = True
    try:
        _spend_notice()
    except Exception as exc:  # a notice is never a reason for a run to fail
        logger.debug("could not spend Ray's actor restart notice: %s", exc)


def _spend_notice() -> None:
    import ray

    @ray.remote(num_cpus=0, max_restarts=1)
    class _Throwaway:
        def __init__(self, _arg: object) -> None:
            pass

    ref = ray.put(None)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            actor = _Throwaway.remote(ref)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        caught.seek(0)
        others = [line for line in caught.read().splitlines(keepends=True) if _RESTART_NOTICE not in line]
    ray.kill(actor)
    if others:
        os.write(2, b"".join(others))


@contextmanager
def _loopback_only() -> Iterator[None]:
    """An embedded local Ray listens on 127.0.0.1 only: nobody else on the network can reach its GCS,
    raylet, object manager or agents (by default they listen on all interfaces, the dashboard agent on 0.0.0.0).

    Ray binds every server to the node IP, and takes 127.0.0.1 as the node IP only when its
    ``ENABLE_RAY_CLUSTER`` constant is off (read once at import from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, which
    would also stop a later ``ray.init(address=...)`` in this process from finding its own IP). So the
    constant is switched off for this ``ray.init`` only and restored; the node keeps its address after.
    ``tests/cluster/test_connect.py`` checks every listener in the process table.
    """
    try:
        import ray._private.ray_constants as constants
    except ImportError:  # another Ray layout: it binds where it binds (the test says so)
        yield
        return
    saved = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if saved is None:
        yield
        return
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved


#: what every worker of a run imports (Lance and Ray Data, through the read, prepare and write tasks and the
#: encoder actor), preloaded by the embedded Ray's workers. Not torch or transformers: Ray preloads these in
#: every worker it starts, and the id registry, the progress counter and Ray Data's own actors would pay
#: for them (~2.5 s of CPU each, at the same time as the encoder actor's start); the encoder actor imports
#: them itself when it loads the model (``cluster._stages.load_encoder``).
_PRELOAD = ("cluster._stages", "ray.data")


@contextmanager
def _preloaded_workers() -> Iterator[None]:
    """The embedded local Ray's workers import what every worker of a run needs (``_PRELOAD``) as soon as
    they start: the prestarted ones while the driver still plans the run, instead of after work is placed on
    them.

    Ray starts one worker per CPU with the node and imports the modules its ``RAY_preload_python_modules``
    names in each worker it starts, prestarted or later, before the worker takes work (a raylet setting,
    read from the environment when the node starts: set for this ``ray.init`` only). A setting of the
    user's own is kept; so is a checkout whose packages Ray's workers could not import (nothing is
    preloaded then).
    """
    import importlib.util

    name = "RAY_preload_python_modules"
    if os.environ.get(name) is not None or importlib.util.find_spec(_PRELOAD[0].split(".")[0]) is None:
        yield
        return
    os.environ[name] = ",".join(_PRELOAD)
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _in_submitted_job() -> bool:
    """True in the driver of a job submitted through the Jobs API with the packages in its runtime env:
    they are there already, and Ray refuses a driver's py_modules on top of the job's (a conflict)."""
    import json

    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        return False
    return bool((config.get("runtime_env") or {}).get("py_modules"))


def _use_token_auth_if_available() -> None:
    """Ray 2.60 clients joining a cluster don't send its auth token unless token mode is on, even
    when ~/.ray/auth_token holds it (seen with `ray start --head`); turn it on when a token is there.

    Ray reads the mode into its config at import, so setting the variable alone is not enough;
    Ray's own helper sets it and refreshes the config.
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another Ray version: the environment variable is the documented switch
        token_file = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
        if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(token_file):
            os.environ["RAY_AUTH_MODE"] = "token"
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def probe_address(address: str, timeout: float) -> None:
    """Fail fast on a host:port nobody listens on (ray.init would retry for a long time)."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.scheme not in ("tcp", "ray") or not parsed.hostname or not parsed.port:
        return
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(
            f"cannot reach a Ray cluster at {address!r} ({exc}); is `ray start --head` running there, "
            f"and is the GCS port right (default 6379)?"
        ) from None


def _module_dir(name: str) -> str:
    import importlib

    module = importlib.import_module(name)
    return os.path.dirname(module.__file__ or "")
