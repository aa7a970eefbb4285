"""``embedjob submit | status | logs | stop``: jobs on a Ray cluster, through its Jobs API."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ._app import PythonOpt, app, quiet_ray_client, when
from ._console import console, err_console, fail

AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="The cluster's Ray Jobs API (its dashboard), e.g. http://HEAD:8265. "
        "Default: RAY_API_SERVER_ADDRESS, else RAY_ADDRESS when it is an http(s):// URL.",
    ),
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for the cluster's Jobs API to accept a connection.")
]


@app.command()
def submit(
    job: Annotated[str, typer.Argument(help="The job file (TOML).")],
    address: AddressOpt = None,
    submission_id: Annotated[
        str | None, typer.Option("--submission-id", help="Your own id for the Ray job (must be new).")
    ] = None,
    python: PythonOpt = "python",
    follow: Annotated[bool, typer.Option("--follow", help="Stream the job's output until it ends.")] = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Submit a job to a Ray cluster through its Jobs API; prints the job's submission id.

    The job file is validated here and travels with the job, its relative paths made absolute: local
    paths (model, input, output) must mean the same thing on the cluster's nodes.
    """
    from cluster import ClusterError

    from .._spec import JobSpecError, load_job
    from ..submission import is_loopback, local_paths, submit_job

    quiet_ray_client()
    try:
        spec = load_job(job)
        done = submit_job(job, address=address, python=python, submission_id=submission_id, timeout_s=timeout)
    except (JobSpecError, ClusterError, ValueError) as exc:
        fail(exc)
    err_console.print(Text(f"submitted {job} to {done.address}"), soft_wrap=True)
    local = local_paths(spec)
    if local and not is_loopback(done.address):
        err_console.print(
            Text(f"note: the cluster must see these local paths as they are here: {', '.join(local)}"), soft_wrap=True
        )
    console.print(done.submission_id, soft_wrap=True)
    if follow:
        code = _follow(done.address, done.submission_id, timeout)
        raise typer.Exit(code)


#: how long `embedjob stop` waits for the job to end
STOP_WAIT_S = 60.0


@app.command()
def status(
    submission_id: Annotated[str, typer.Argument(metavar="ID", help="The submission id `embedjob submit` printed.")],
    address: AddressOpt = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the job ends; exit 0 if it succeeded, 1 if not.")
    ] = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Show a submitted job's status (PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED)."""
    client = _client(address, timeout, submission_id)
    try:
        info = client.wait(submission_id) if wait else client.info(submission_id)
    except _cluster_errors() as exc:
        fail(exc)
    table = Table(title=f"{info.submission_id}: {info.status}", show_header=False)
    table.add_row("cluster", client.address)
    table.add_row("entrypoint", info.entrypoint)
    if info.message:
        table.add_row("message", info.message.strip())
    table.add_row("started", when(info.start_time))
    table.add_row("ended", when(info.end_time))
    if info.driver_exit_code is not None:
        table.add_row("exit code", str(info.driver_exit_code))
    console.print(table)
    if wait and info.status != "SUCCEEDED":
        raise typer.Exit(1)


@app.command()
def logs(
    submission_id: Annotated[str, typer.Argument(metavar="ID", help="The submission id `embedjob submit` printed.")],
    address: AddressOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming until the job ends.")] = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Print a submitted job's output (its driver's stdout and stderr)."""
    if follow:
        _follow(address, submission_id, timeout)
        return
    client = _client(address, timeout, submission_id)
    try:
        text = client.logs(submission_id)
    except _cluster_errors() as exc:
        fail(exc)
    sys.stdout.write(text)
    sys.stdout.flush()


@app.command()
def stop(
    submission_id: Annotated[str, typer.Argument(metavar="ID", help="The submission id `embedjob submit` printed.")],
    address: AddressOpt = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help=f"Wait until the job has ended (up to {STOP_WAIT_S:g} s).")
    ] = True,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Stop a submitted job (a stopped run commits nothing: its table stays at its previous version)."""
    client = _client(address, timeout, submission_id)
    try:
        stopping = client.stop(submission_id)
        info = client.wait(submission_id, timeout_s=STOP_WAIT_S) if wait else client.info(submission_id)
    except _cluster_errors() as exc:
        fail(exc)
    said = "stop requested" if stopping else "it had already ended"
    console.print(Text(f"{submission_id}: {said}; status {info.status}"), soft_wrap=True)


def _follow(address: str | None, submission_id: str, timeout: float) -> int:
    """Stream the job's output; 0 if it then succeeded, 1 if not."""
    client = _client(address, timeout, submission_id)
    try:
        for chunk in client.follow(submission_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()
        info = client.wait(submission_id, timeout_s=30)
    except _cluster_errors() as exc:
        fail(exc)
    err_console.print(Text(f"{submission_id}: {info.status}"), soft_wrap=True)
    return 0 if info.status == "SUCCEEDED" else 1


def _client(address: str | None, timeout: float, submission_id: str | None = None):
    """The Jobs API client: at ``address``, else where ``submission_id`` was submitted from this machine, else
    ``RAY_ADDRESS`` or the local default."""
    from cluster import ClusterError, RayJobsClient

    from ..state import lookup_submission

    quiet_ray_client()
    if address is None and submission_id is not None and "RAY_ADDRESS" not in os.environ:
        address = lookup_submission(submission_id)

    try:
        return RayJobsClient(address, timeout_s=timeout)
    except (ClusterError, ValueError) as exc:
        fail(exc)


def _cluster_errors() -> tuple[type[Exception], ...]:
    from cluster import ClusterError

    return (ClusterError,)
