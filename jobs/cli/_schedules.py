"""``embedjob schedule add | list | remove | run-due | serve``: cron schedules that fire jobs."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from ..schedule import FireState
from ._app import PythonOpt, app, quiet_ray_client, setup_logging, when
from ._console import console, err_console, fail

StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir", help="Where schedules and their fires are kept. Default: EMBEDJOB_STATE_DIR, else ~/.embedjob."
    ),
]

schedule_app = typer.Typer(
    help="Cron schedules: fire jobs locally or through a cluster's Ray Jobs API.",
    no_args_is_help=True,
)
app.add_typer(schedule_app, name="schedule")


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
        fail(exc)
    nxt = scheduler.next_fire(schedule)
    console.print(
        Text(f"schedule {schedule.name}: {schedule.cron} -> {schedule.job} ({schedule.target}); next {when(nxt)}"),
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
            ("next fire", "due now" if row.next_fire <= now else when(row.next_fire)),
            ("last run", f"#{last.id} for {when(last.slot)}, started {when(last.fired_at)}" if last else "never"),
        ]
        if last:
            ended = f", ended {when(last.finished_at)}" if last.finished_at else ""
            lines.append(("outcome", last.outcome() + ended))
            if last.counts:
                lines.append(("counts", last.counts))
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
        fail(exc)
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
    setup_logging()
    quiet_ray_client()
    scheduler = _scheduler(state_dir, python=python)
    try:
        fires = scheduler.run_due()
    except ValueError as exc:
        fail(exc)
    for fire in fires:
        _print_fire(fire)
    if not fires:
        console.print("nothing due")
    started = [f for f in fires if f.active]
    if wait and started:
        fires = scheduler.wait(started)
        for fire in fires:
            _print_fire(fire)
    if wait and any(f.state == FireState.FAILED for f in fires):
        raise typer.Exit(1)


@schedule_app.command("fire")
def schedule_fire(
    name: Annotated[str, typer.Argument(help="The schedule to fire now.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the run ends; exit 1 if it failed.")] = False,
    python: PythonOpt = "python",
    state_dir: StateDirOpt = None,
) -> None:
    """Fire a schedule now, whatever its cron says (it counts as its latest slot; skipped while its previous run
    is still going)."""
    setup_logging()
    quiet_ray_client()
    scheduler = _scheduler(state_dir, python=python)
    try:
        fire = scheduler.fire_now(name)
    except ValueError as exc:
        fail(exc)
    _print_fire(fire)
    if wait and fire.active:
        (fire,) = scheduler.wait([fire])
        _print_fire(fire)
    if wait and fire.state == FireState.FAILED:
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
    setup_logging()
    quiet_ray_client()
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
        fail(exc)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    err_console.print("scheduler stopped")


def _scheduler(state_dir: Path | None, *, python: str = "python"):
    from ..schedule import Scheduler

    try:
        return Scheduler(state_dir, python=python)
    except ValueError as exc:
        fail(exc)


def _print_fire(fire) -> None:
    where = fire.submission_id or (f"pid {fire.pid}" if fire.pid else fire.kind)
    text = f"{fire.schedule}: fire #{fire.id} for {when(fire.slot)} ({where}): {fire.outcome()}"
    if fire.counts:
        text += f"; {fire.counts}"
    if fire.note:
        text += f"; {fire.note}"
    if fire.log_path:
        text += f"; log {fire.log_path}"
    console.print(Text(text), soft_wrap=True)
