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

import os

# isort: off
from ._app import app
from . import _jobs, _tables, _migrate, _models, _cluster, _quality, _schedules  # noqa: F401  (they register)
from ._jobs import print_summary

# isort: on

__all__ = ["app", "main", "print_summary"]


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()
