"""``embedjob validate | run | resume``: check a job, run it, finish a run whose driver died."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ._app import LockTimeoutOpt, ProgressOpt, app, setup_logging
from ._console import console, err_console, fail

__all__ = ["print_summary"]


@app.command()
def init(
    corpus: Annotated[str, typer.Argument(help="The corpus: a file, a folder, a glob or s3://bucket/prefix/.")],
    job: Annotated[
        str | None, typer.Option("--job", help="Where to write the job file (default: NAME.toml here).")
    ] = None,
    output: Annotated[str | None, typer.Option("--output", help="The output table (default: out/NAME.lance).")] = None,
    id_column: Annotated[str | None, typer.Option("--id-column", help="The column holding the ids.")] = None,
    text_column: Annotated[str | None, typer.Option("--text-column", help="The column holding the text.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="A model dir or name (see `embedjob models`).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing job file.")] = False,
) -> None:
    """Write a job file for a corpus: the id and text columns read from its schema and first rows, a model this
    machine has, the starbucks granularities; checked as `embedjob validate` checks it."""
    from .._init import init_job
    from .._spec import JobSpecError

    try:
        made = init_job(
            corpus, job=job, output=output, id_column=id_column, text_column=text_column, model=model, force=force
        )
    except (JobSpecError, ValueError) as exc:
        fail(exc)
    for reason in made.reasons:
        err_console.print(Text(f"picked the {reason}"), soft_wrap=True)
    _print_resolved(f"{made.path}: written and valid", made.resolved)
    console.print(Text(f"next: embedjob run {made.path}"), soft_wrap=True)


@app.command()
def validate(job: Annotated[str, typer.Argument(help="The job file (TOML).")]) -> None:
    """Run every check a job gets before Ray starts, and nothing else."""
    from .._checks import check_job
    from .._spec import JobSpecError, load_job

    try:
        resolved = check_job(load_job(job), source_name=job)
    except JobSpecError as exc:
        fail(exc)
    _print_resolved(f"{job}: valid", resolved)


@app.command()
def plan(
    job: Annotated[str, typer.Argument(help="The job file (TOML).")],
    json_out: Annotated[bool, typer.Option("--json", help="The plan as one JSON object.")] = False,
    sample: Annotated[
        int, typer.Option("--sample", min=100, help="Texts tokenized when more than 50,000 rows are to be embedded.")
    ] = 5000,
    measure: Annotated[
        bool, typer.Option(help="Without recorded runs, time a short encode here for the estimate.")
    ] = True,
) -> None:
    """What a run of the job would do now, without running it (no Ray, no GPU): rows, tokens, truncation, what
    an incremental night touches, bytes per row, and an estimated embedding time."""
    import json

    from .._plan import plan_job
    from .._spec import JobSpecError

    setup_logging()
    try:
        made = plan_job(job, sample=sample, measure=measure)
    except (JobSpecError, ValueError) as exc:
        fail(exc)
    if json_out:
        typer.echo(json.dumps(made.to_json()))
        return
    table = Table(title=f"{job}: plan ({made.mode} into {made.table_uri})", show_header=False)
    table.add_row("rows", f"{made.rows:,} read; {made.rejected:,} would be rejected")
    if made.mode == "incremental":
        table.add_row(
            "changes",
            f"{made.new:,} new, {made.changed:,} changed, {made.unchanged:,} unchanged, {made.deleted:,} deleted",
        )
    chunks = f" in {made.chunks:,} chunks" if made.chunks is not None else ""
    table.add_row("to embed", f"{made.rows_to_embed:,} rows{chunks}, {made.tokens:,} tokens ({made.tokens_counted})")
    share = f" ({made.truncated / made.rows_to_embed:.1%})" if made.rows_to_embed else ""
    table.add_row("truncated", f"{made.truncated:,} texts{share} longer than max_length {made.max_length}")
    table.add_row("granularities", f"{', '.join(made.granularities)}: {made.bytes_per_row:,} bytes of vectors per row")
    if made.estimated_seconds is not None:
        rate = f" at {made.tokens_per_second:,.0f} tokens/s ({made.throughput_from})" if made.tokens_per_second else ""
        table.add_row("estimated", f"{made.estimated_seconds:,.0f} s of embedding{rate}, plus the run's start-up")
    console.print(table)
    for warning in made.warnings:
        err_console.print(Text(f"warning: {warning}", style="yellow"), soft_wrap=True)


def _print_resolved(title: str, resolved) -> None:
    """What a checked job will do: input, model, granularities, output and mode, calibration."""
    table = Table(title=title, show_header=False)
    table.add_row("input", f"{resolved.source.uri} ({resolved.source.format}, {len(resolved.source.paths)} file(s))")
    table.add_row("model", resolved.provenance.model_path)
    table.add_row("granularities", ", ".join(str(g) for g in resolved.granularities))
    table.add_row("output", f"{resolved.output_uri} (mode {resolved.mode})")
    cal = resolved.calibration
    table.add_row(
        "calibration", f"{cal.fingerprint} ({resolved.calibration_origin})" if cal else resolved.calibration_origin
    )
    console.print(table)


@app.command()
def run(
    job: Annotated[str, typer.Argument(help="The job file (TOML).")],
    progress: ProgressOpt = True,
    address: Annotated[str | None, typer.Option(help="Ray address (overrides cluster.address).")] = None,
    lock_timeout: LockTimeoutOpt = 0.0,
    add_granularity: Annotated[
        list[str] | None,
        typer.Option(
            "--add-granularity",
            help="Backfill: embed the table's stored text for these new granularities (e.g. l4_d64) and add "
            "them as columns in one commit; the job lists the table's granularities plus these.",
        ),
    ] = None,
    allow_deletes: Annotated[
        bool,
        typer.Option(
            "--allow-deletes",
            help="Allow this run to delete more of the table than \\[output] max_delete_fraction (ids gone from "
            "the input); without it such a run fails before its commit.",
        ),
    ] = False,
    migrate: Annotated[
        bool,
        typer.Option(
            "--migrate",
            help="A step of a staged migration to the job's (changed) settings: new and changed rows get both "
            "settings' vectors, and a slice of the old rows the new ones; the table stays searchable "
            "(output.mode = 'migrate').",
        ),
    ] = False,
    budget: Annotated[
        str | None,
        typer.Option(help="--migrate: time this run spends taking old rows, e.g. 2h (\\[migrate] budget)."),
    ] = None,
    max_rows: Annotated[
        int | None,
        typer.Option(
            "--max-rows", min=1, help="--migrate: the most old rows this run re-embeds (\\[migrate] max_rows_per_run)."
        ),
    ] = None,
) -> None:
    """Embed what changed in the corpus a job names and commit one new version of its output table.

    Once the table exists the default mode is incremental: only new and changed
    rows are embedded. An unfinished earlier run of the same job is resumed.
    """
    from .._run import run_job

    setup_logging()
    overrides = _run_overrides(address=address, migrate=migrate, budget=budget, max_rows=max_rows)
    try:
        if add_granularity:
            from .._backfill import backfill_job

            grans = [g.strip() for item in add_granularity for g in item.split(",") if g.strip()]
            summary = backfill_job(job, grans, progress=progress, overrides=overrides, wait_s=lock_timeout)
        else:
            summary = run_job(
                job, progress=progress, overrides=overrides, wait_s=lock_timeout, allow_deletes=allow_deletes
            )
    except _run_errors() as exc:
        fail(exc)
    print_summary(summary)
    _write_summary_file(summary)


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The id of an unfinished run.")],
    table: Annotated[
        str | None, typer.Option(help="The run's output table, when this machine did not start the run.")
    ] = None,
    progress: ProgressOpt = True,
    address: Annotated[str | None, typer.Option(help="Ray address (overrides cluster.address).")] = None,
    lock_timeout: LockTimeoutOpt = 0.0,
    allow_deletes: Annotated[
        bool, typer.Option("--allow-deletes", help="Allow deleting more than \\[output] max_delete_fraction.")
    ] = False,
) -> None:
    """Finish a run whose driver died: rows it staged are committed, not embedded again."""
    from .._run import resume_run

    setup_logging()
    try:
        summary = resume_run(
            run_id,
            table_uri=table,
            progress=progress,
            address=address,
            wait_s=lock_timeout,
            allow_deletes=allow_deletes,
        )
    except _run_errors() as exc:
        fail(exc)
    print_summary(summary)
    _write_summary_file(summary)


def _run_overrides(*, address: str | None, migrate: bool, budget: str | None, max_rows: int | None) -> dict | None:
    """The job values ``embedjob run``'s options override (None: none)."""
    out: dict = {}
    if address:
        out["cluster.address"] = address
    if migrate:
        out["output.mode"] = "migrate"
    if budget is not None:
        out["migrate.budget"] = budget
    if max_rows is not None:
        out["migrate.max_rows_per_run"] = max_rows
    return out or None


def _write_summary_file(summary) -> None:
    """A run fired by the scheduler writes its summary where the scheduler reads it (``schedule list``)."""
    from ..schedule import SUMMARY_FILE_ENV, SUMMARY_LINE
    from ..state import private_file

    path = os.environ.get(SUMMARY_FILE_ENV)
    if path == "-":  # a run on a cluster: the scheduler reads its log, not its files
        typer.echo(SUMMARY_LINE + json.dumps(summary.to_json()))
    elif path:
        try:
            private_file(Path(path), json.dumps(summary.to_json()).encode())
        except OSError as exc:  # the run committed: a summary file that cannot be written is only a warning
            err_console.print(Text(f"warning: could not write the run's summary to {path}: {exc}"), soft_wrap=True)


def print_summary(summary) -> None:
    """Print a run's summary as a table and its warnings on stderr; exit code 1 when the run committed but
    one of its indexes could not be built, or its quality gate ([gate]) failed."""
    from .._gate import gate_line

    table = Table(title=f"run {summary.run_id}: {summary.status}", show_header=False)
    version = (
        f"version {summary.table_version}"
        if summary.table_version != summary.read_version
        else f"still version {summary.table_version}: nothing changed"
    )
    table.add_row("table", f"{summary.table_uri} ({version}, mode {summary.mode})")
    _add_counts(table, summary)
    table.add_row("tokens (truncated texts)", f"{summary.tokens:,} ({summary.truncated:,})")
    table.add_row("actor pool", summary.pool)
    per_node = getattr(summary, "rows_per_node", None) or {}
    if len(per_node) > 1:  # each Ray node id by its first 8 hex digits
        table.add_row(
            f"rows per node ({len(per_node)} nodes)", ", ".join(f"{node[:8]}: {n:,}" for node, n in per_node.items())
        )
    if summary.calibration:
        fitted = f", fitting took {summary.seconds_calibration:.1f} s" if summary.seconds_calibration else ""
        table.add_row("calibration", f"{summary.calibration} ({summary.calibration_origin}{fitted})")
    tags = getattr(summary, "tags", None) or []
    if tags:
        table.add_row("tags", f"{', '.join(tags)} (version {summary.table_version})")
    table.add_row("wall time", f"{summary.seconds:.1f} s (pipeline {summary.seconds_pipeline:.1f} s)")
    if summary.rates_meaningful:
        table.add_row("throughput", f"{summary.rows_per_s:,.1f} rows/s, {summary.tokens_per_s:,.0f} tokens/s")
    for i in summary.indexes:
        what = (
            f"{i['description']} on {i['rows']:,} rows in {i['seconds']:.1f} s (version {i['version']})"
            if i["action"] == "built"
            else f"{i['action']}: {i['reason']}"
        )
        table.add_row(f"index {i['column']}", what)
    gate = getattr(summary, "gate", None)
    if gate:
        table.add_row("quality gate", gate_line(gate).removeprefix("quality gate: "))
    console.print(table)
    for warning in getattr(summary, "warnings", None) or []:
        err_console.print(Text("warning: ", style="yellow") + Text(warning), soft_wrap=True)
    _exit_if_failed(summary)


def _add_counts(table: Table, summary) -> None:
    """A run's rows: read / embedded / rejected, what each row needed, a migration step's part, resumed rows."""
    chunked = getattr(summary, "chunked", False)
    table.add_row(
        "documents read / chunks embedded / rejected" if chunked else "rows read / embedded / rejected",
        f"{summary.rows_read:,} / {summary.rows_embedded:,} / {summary.rows_rejected:,}",
    )
    table.add_row(
        "new / changed / unchanged / deleted" + (" documents" if chunked else ""),
        f"{summary.rows_new:,} / {summary.rows_changed:,} / {summary.rows_unchanged:,} / {summary.rows_deleted:,}",
    )
    migration = getattr(summary, "migration", None)
    if migration:
        table.add_row("migration", _migration_line(summary, migration))
    if summary.rows_resumed:
        table.add_row("resumed", f"{summary.rows_resumed:,} rows staged by an earlier attempt, not embedded again")
    if summary.reject_reasons:
        table.add_row("reject reasons", ", ".join(f"{r}: {n}" for r, n in summary.reject_reasons.items()))


def _migration_line(summary, migration: dict) -> str:
    """A migration step's part: old rows taken now, rows with the new vectors of all, the switch."""
    done, total = migration["done"], migration["total"]
    line = f"{summary.rows_migrated:,} old rows re-embedded; {done:,} of {total:,} rows have the new vectors"
    if migration.get("switched"):
        line += f"; switched: version {migration['switched']} has the new settings"
    return f"{line} ({migration['to']})"


def _exit_if_failed(summary) -> None:
    """Exit code 1 for a run that committed but failed a check after its commit: an index, or its quality gate."""
    from .._gate import gate_line

    if any(i["action"] == "failed" for i in summary.indexes):
        err_console.print("error: the run committed, but an index could not be built (see above)")
        raise typer.Exit(1)
    gate = getattr(summary, "gate", None)
    if gate and not gate.get("passed"):
        err_console.print(
            f"error: run {summary.run_id} committed version {summary.table_version}, but {gate_line(gate)}; "
            f"latest-good was not moved to it",
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _run_errors() -> tuple[type[Exception], ...]:
    from storage import RunIdError, TableLocked, TableMovedError

    from .._guards import RunRefused
    from .._run import RunNotResumable
    from .._spec import JobSpecError

    return (JobSpecError, RunRefused, RunNotResumable, RunIdError, TableLocked, TableMovedError)
