"""The ``embedjob`` command line: one app, one error path, commands grouped by noun.

- ``_app``: the app, ``--debug``, ``version`` and what the command modules share;
- ``_console``: the consoles and the one way to fail (``error: <one line>``, exit code 2);
- ``_jobs``: validate, run, resume; ``_tables``: inspect, index, query, gc;
  ``_models``: calibrate, model-info; ``_cluster``: submit, status, logs, stop;
  ``_quality``: evaluate; ``_schedules``: the ``schedule`` group; ``_migrate``: the ``migrate`` group.

Each command module registers its commands on the one app when imported; the
order of the imports below is the order of the commands in ``embedjob --help``.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

# isort: off
from ._app import app
from . import _jobs, _tables, _migrate, _models, _cluster, _quality, _schedules  # noqa: F401  (they register)
from ._jobs import print_summary

# isort: on

__all__ = ["app", "main", "print_summary"]


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        app()
    except SystemExit as exc:
        _exit_now(exc.code)
    _exit_now(0)


def _exit_now(code: int | str | None) -> None:
    """End the process once the command is done, without Python's finalisation.

    Tearing down the modules a run imports (torch, transformers, Lance, Ray) took 1.4 s on this 2-core machine
    when quiet and 5 s under load, after the command's work and output were done. The exit handlers still run
    (Ray's shutdown, logging's flush) and stdout and stderr are flushed; only the module teardown is skipped. A
    command that left a thread of its own running exits the usual way, which waits for it.
    """
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code or 0)
