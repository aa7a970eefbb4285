"""The one ``embedjob`` app, its one error path and ``--debug``, and what several command modules share.

Each command module (``_jobs``, ``_tables``, ``_models``, ``_cluster``, ``_quality``, ``_schedules``, ``_migrate``)
registers its commands on :data:`app` when it is imported.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from typing import Annotated

import typer
from typer.core import TyperGroup

from storage import VERSION as __version__

from . import _console
from ._console import console, fail

__all__ = [
    "EndpointOpt",
    "LockTimeoutOpt",
    "ProgressOpt",
    "PythonOpt",
    "RegionOpt",
    "app",
    "open_table_at",
    "quiet_ray_client",
    "setup_logging",
    "when",
]


class _OneErrorPath(TyperGroup):
    """Every command's failure ends as one line, ``error: ...`` naming the value and the fix, and exit code 2;
    ``embedjob --debug ...`` (or ``EMBEDJOB_DEBUG=1``) shows the traceback instead."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if type(exc).__module__.startswith(("typer", "click")):  # exits, aborts, usage errors: theirs
                raise
            fail(exc)  # (with --debug: raised again, traceback and all)


app = typer.Typer(
    name="embedjob",
    help="Distributed batch embedding jobs with elastic (layer, dim) granularities.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_OneErrorPath,
)

EndpointOpt = Annotated[
    str | None, typer.Option("--endpoint", help="S3-compatible endpoint for s3:// tables (keys from AWS_* env).")
]
RegionOpt = Annotated[str | None, typer.Option("--region", help="S3 region for s3:// tables.")]
#: one name, one meaning: ``--wait`` (a flag) waits until something ends; this waits for a table's lock
LockTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--lock-timeout", min=0, help="Seconds to wait for a run that holds the table's lock (default 0: refuse)."
    ),
]
ProgressOpt = Annotated[
    bool,
    typer.Option(
        help="A live progress display on a terminal: stage, rows done of the total, tokens, rows/s, time left "
        "(elsewhere, or with --no-progress: a progress line every 10 s, EMBEDJOB_PROGRESS_EVERY_S)."
    ),
]
PythonOpt = Annotated[
    str,
    typer.Option(
        "--python", help="The interpreter on the cluster's head node that has Ray and embedjob's dependencies."
    ),
]


def _print_version(value: bool) -> None:
    if value:
        console.print(f"embedjob {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback of a failure instead of its one-line error.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Also show Ray's and Lance's own output: Ray Data's progress bars and INFO logs, Ray's notices, "
            "Lance's warnings.",
        ),
    ] = False,
) -> None:
    _console.debug = debug
    _console.verbose = verbose
    if verbose:  # read by cluster when a command starts (cluster.verbose_output), here and in what it starts
        os.environ["EMBEDJOB_VERBOSE"] = "1"
    if not verbose:  # Lance's Rust warnings (index statistics, "no existing dataset"): here and in Ray's workers
        os.environ.setdefault("LANCE_LOG", "error")


@app.command()
def version() -> None:
    """Print the embedjob version."""
    console.print(f"embedjob {__version__}")


def open_table_at(uri: str, endpoint: str | None, region: str | None):
    """The table at ``uri`` (an s3:// one with the store's options, checked in one line first), or ``fail``."""
    from storage import ObjectStore, StoreError, TableNotFoundError, check_store, open_table

    opts = None
    try:
        if uri.startswith("s3://"):
            opts = ObjectStore.from_env(endpoint=endpoint, region=region).lance_options()
            check_store(uri, opts)  # one line, fast, for a store that can't be used
        return open_table(uri, storage_options=opts)
    except (TableNotFoundError, StoreError) as exc:
        fail(exc)


def setup_logging() -> None:
    """INFO logs with a timestamp for commands that run work (run, calibrate, the scheduler), libraries quieter:
    Ray Data's INFO lines, Ray's token-auth notice and Lance's Rust warnings only with ``embedjob -v``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not _console.verbose:
        # the loggers Ray configures when it is imported (Lance's log level is set by the app's callback)
        import ray.data  # noqa: F401

        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    # transformers' "Loading weights" bar, once per process that loads a model (every actor): off, here and in
    # the Ray workers this process starts (they inherit the environment)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for noisy in ("httpx", "urllib3", "botocore", "s3fs", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def quiet_ray_client() -> None:
    """Ray's client logs every package upload, and warns at each call that the cluster uses tokens."""
    import ray.job_submission  # noqa: F401  (its modules set their loggers to INFO when imported)

    for name in (
        "ray.dashboard.modules.dashboard_sdk",
        "ray.dashboard.modules.job.sdk",
        "ray._private.runtime_env.packaging",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)


def when(ts: float | None) -> str:
    """A Unix time as local ISO time to the second; ``-`` for none."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().isoformat(sep=" ", timespec="seconds")
