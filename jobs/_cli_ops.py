"""``embedjob submit | status | logs | stop`` (the Ray Jobs API) and ``embedjob schedule ...`` (cron)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ._console import console, err_console
from ._console import fail as _fail

__all__ = ["register"]


AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="The cluster's Ray Jobs API (its dashboard), e.g. http://HEAD:8265. "
        "Default: RAY_API_SERVER_ADDRESS, else RAY_ADDRESS when it is an http(s):// URL.",
    ),
]
StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir", help="Where schedules and their fires are kept. Default: EMBEDJOB_STATE_DIR, else ~/.embedjob."
    ),
]
PythonOpt = Annotated[
    str,
    typer.Option(
        "--python", help="The interpreter on the cluster's head node that has Ray and embedjob's dependencies."
    ),
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for the cluster's Jobs API to accept a connection.")
]

schedule_app = typer.Typer(
    help="Cron schedules: fire jobs locally or through a cluster's Ray Jobs API.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the submission commands and the ``schedule`` group to the ``embedjob`` app."""
    app.command()(submit)
    app.command()(status)
    app.command()(logs)
    app.command()(stop)
    app.add_typer(schedule_app, name="schedule")


# ----------------------------------------------------------------- Ray Jobs API


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

    from ._spec import JobSpecError, load_job
    from ._submit import is_loopback, local_paths, submit_job

    _quiet_ray_client()
    try:
        spec = load_job(job)
        done = submit_job(job, address=address, python=python, submission_id=submission_id, timeout_s=timeout)
    except (JobSpecError, ClusterError, ValueError) as exc:
        _fail(exc)
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


def status(
    submission_id: Annotated[str, typer.Argument(metavar="ID", help="The submission id `embedjob submit` printed.")],
    address: AddressOpt = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the job ends; exit 0 if it succeeded, 1 if not.")
    ] = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Show a submitted job's status (PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED)."""
    client = _client(address, timeout)
    try:
        info = client.wait(submission_id) if wait else client.info(submission_id)
    except _cluster_errors() as exc:
        _fail(exc)
    table = Table(title=f"{info.submission_id}: {info.status}", show_header=False)
    table.add_row("cluster", client.address)
    table.add_row("entrypoint", info.entrypoint)
    if info.message:
        table.add_row("message", info.message.strip())
    table.add_row("started", _when(info.start_time))
    table.add_row("ended", _when(info.end_time))
    if info.driver_exit_code is not None:
        table.add_row("exit code", str(info.driver_exit_code))
    console.print(table)
    if wait and info.status != "SUCCEEDED":
        raise typer.Exit(1)


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
    client = _client(address, timeout)
    try:
        text = client.logs(submission_id)
    except _cluster_errors() as exc:
        _fail(exc)
    sys.stdout.write(text)
    sys.stdout.flush()


def stop(
    submission_id: Annotated[str, typer.Argument(metavar="ID", help="The submission id `embedjob submit` printed.")],
    address: AddressOpt = None,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for it to end (0: don't wait).")] = 60.0,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Stop a submitted job (a stopped run commits nothing: its table stays at its previous version)."""
    client = _client(address, timeout)
    try:
        stopping = client.stop(submission_id)
        info = client.wait(submission_id, timeout_s=wait) if wait > 0 else client.info(submission_id)
    except _cluster_errors() as exc:
        _fail(exc)
    said = "stop requested" if stopping else "it had already ended"
    console.print(Text(f"{submission_id}: {said}; status {info.status}"), soft_wrap=True)


def _follow(address: str | None, submission_id: str, timeout: float) -> int:
    """Stream the job's output; 0 if it then succeeded, 1 if not."""
    client = _client(address, timeout)
    try:
        for chunk in client.follow(submission_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()
        info = client.wait(submission_id, timeout_s=30)
    except _cluster_errors() as exc:
        _fail(exc)
    err_console.print(Text(f"{submission_id}: {info.status}"), soft_wrap=True)
    return 0 if info.status == "SUCCEEDED" else 1


def _client(address: str | None, timeout: float):
    from cluster import ClusterError, RayJobsClient

    _quiet_ray_client()

    try:
        return RayJobsClient(address, timeout_s=timeout)
    except (ClusterError, ValueError) as exc:
        _fail(exc)


def _cluster_errors() -> tuple[type[Exception], ...]:
    from cluster import ClusterError

    return (ClusterError,)


# ----------------------------------------------------------------- schedules


@schedule_app.command("add")
def schedule_add(
    name: Annotated[str, typer.Argument(help="A name for the schedule (letters, digits, '.', '_', '-').")],
    job: Annotated[str, typer.Argument(help="The job file (TOML); read afresh at every fire.")],
    cron: Annotated[str, typer.Option("--cron", help="When: five cron fields, e.g. '0 2 * * *' (02:00 daily).")],
    address: Annotated[
        str | None,
        typer.Option(
            "--address", help="Fire through this cluster's Ray Jobs API (http://HEAD:8265); default: run locally."
        ),
    ] = None,
    timezone: Annotated[
        str | None, typer.Option("--timezone", help="IANA time zone of the cron fields; default: this machine's.")
    ] = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Add a schedule. Its first fire is its first cron slot from now."""
    scheduler = _scheduler(state_dir)
    try:
        schedule = scheduler.add(name, job, cron, address=address, timezone=timezone)
    except ValueError as exc:
        _fail(exc)
    nxt = scheduler.next_fire(schedule)
    console.print(
        Text(f"schedule {schedule.name}: {schedule.cron} -> {schedule.job} ({schedule.target}); next {_when(nxt)}"),
        soft_wrap=True,
    )


@schedule_app.command("list")
def schedule_list(state_dir: StateDirOpt = None) -> None:
    """Every schedule with its next fire time and its last run's outcome."""
    scheduler = _scheduler(state_dir)
    rows = scheduler.status()
    if not rows:
        console.print(f"no schedules in {scheduler.state_dir}")
        return
    console.print(Text(f"schedules in {scheduler.state_dir}"), soft_wrap=True)
    now = time.time()
    for row in rows:
        s, last = row.schedule, row.last_fire
        lines = [
            ("cron", s.cron + (f" ({s.timezone})" if s.timezone else " (local time)")),
            ("job", s.job),
            ("runs on", s.target),
            ("next fire", "due now" if row.next_fire <= now else _when(row.next_fire)),
            ("last run", f"#{last.id} for {_when(last.slot)}, started {_when(last.fired_at)}" if last else "never"),
        ]
        if last:
            ended = f", ended {_when(last.finished_at)}" if last.finished_at else ""
            lines.append(("outcome", last.outcome() + ended))
            if last.log_path:
                lines.append(("log", last.log_path))
        if row.skipped:
            lines.append(("skipped", f"{row.skipped} later fire(s): the run was still going"))
        console.print(Text(s.name, style="bold"))
        for key, value in lines:
            console.print(Text(f"  {key:<10} {value}"), soft_wrap=True)


@schedule_app.command("remove")
def schedule_remove(
    name: Annotated[str, typer.Argument(help="The schedule to remove.")], state_dir: StateDirOpt = None
) -> None:
    """Remove a schedule and its history (a run in progress goes on)."""
    try:
        schedule = _scheduler(state_dir).remove(name)
    except ValueError as exc:
        _fail(exc)
    console.print(Text(f"removed schedule {schedule.name} ({schedule.cron} -> {schedule.job})"), soft_wrap=True)


@schedule_app.command("run-due")
def schedule_run_due(
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Wait for the runs it starts; exit 1 if any failed (for a Kubernetes CronJob)."),
    ] = False,
    python: PythonOpt = "python",
    state_dir: StateDirOpt = None,
) -> None:
    """Fire every schedule that is due, once each, and return (for system cron or a Kubernetes CronJob).

    A schedule whose slots were missed fires once; one whose previous run is still going is skipped.
    """
    _logging()
    _quiet_ray_client()
    scheduler = _scheduler(state_dir, python=python)
    try:
        fires = scheduler.run_due()
    except ValueError as exc:
        _fail(exc)
    for fire in fires:
        _print_fire(fire)
    if not fires:
        console.print("nothing due")
    started = [f for f in fires if f.active]
    if wait and started:
        fires = scheduler.wait(started)
        for fire in fires:
            _print_fire(fire)
    if wait and any(f.state == "failed" for f in fires):
        raise typer.Exit(1)


@schedule_app.command("serve")
def schedule_serve(
    poll: Annotated[
        float, typer.Option("--poll", help="Seconds between looks at the store (new schedules, outcomes).")
    ] = 30.0,
    python: PythonOpt = "python",
    state_dir: StateDirOpt = None,
) -> None:
    """Run the scheduler until SIGTERM or Ctrl-C: missed slots fire once at start-up, then each slot on time.

    Runs it started go on after it stops.
    """
    _logging()
    _quiet_ray_client()
    scheduler = _scheduler(state_dir, python=python)
    stop_event = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        err_console.print(f"{signal.Signals(signum).name}: stopping the scheduler (runs in progress go on)")
        stop_event.set()

    saved = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    err_console.print(Text(f"scheduler serving {scheduler.state_dir} (poll {poll:g} s)"), soft_wrap=True)
    try:
        scheduler.serve(poll_s=poll, stop=stop_event, on_fire=_print_fire)
    except ValueError as exc:
        _fail(exc)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    err_console.print("scheduler stopped")


def _scheduler(state_dir: Path | None, *, python: str = "python"):
    from ._schedule import Scheduler

    try:
        return Scheduler(state_dir, python=python)
    except ValueError as exc:
        _fail(exc)


def _print_fire(fire) -> None:
    where = fire.submission_id or (f"pid {fire.pid}" if fire.pid else fire.kind)
    text = f"{fire.schedule}: fire #{fire.id} for {_when(fire.slot)} ({where}): {fire.outcome()}"
    if fire.note:
        text += f"; {fire.note}"
    if fire.log_path:
        text += f"; log {fire.log_path}"
    console.print(Text(text), soft_wrap=True)


# ----------------------------------------------------------------- helpers


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().isoformat(sep=" ", timespec="seconds")


def _quiet_ray_client() -> None:
    """Ray's client logs every package upload, and warns at each call that the cluster uses tokens."""
    import ray.job_submission  # noqa: F401  (its modules set their loggers to INFO when imported)

    for name in (
        "ray.dashboard.modules.dashboard_sdk",
        "ray.dashboard.modules.job.sdk",
        "ray._private.runtime_env.packaging",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
