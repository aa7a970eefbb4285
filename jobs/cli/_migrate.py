"""``embedjob migrate abort | fit-map``: a staged migration's table-level commands (its steps are
``embedjob run --migrate``; ``inspect`` shows it)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ._app import EndpointOpt, LockTimeoutOpt, RegionOpt, app, open_table_at
from ._console import console, err_console, fail

migrate_app = typer.Typer(
    help="A staged migration to new settings: its steps are `embedjob run JOB --migrate`; `inspect` shows it.",
    no_args_is_help=True,
)
app.add_typer(migrate_app, name="migrate")


@migrate_app.command()
def abort(
    table_uri: Annotated[str, typer.Argument(metavar="TABLE", help="Output table URI (path or s3://).")],
    lock_timeout: LockTimeoutOpt = 0.0,
    endpoint: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Undo the table's migration in one commit: its new-settings columns and its record go, every row keeps
    its old vectors (recorded in the runs table; the versions before stay readable)."""
    from storage import MigrationError, TableLocked

    from .._migrate import abort_migration_of

    tbl = open_table_at(table_uri, endpoint, region)
    try:
        report = abort_migration_of(tbl.uri, storage_options=tbl.storage_options, wait_s=lock_timeout)
    except (MigrationError, TableLocked) as exc:
        fail(exc)
    console.print(
        Text(
            f"aborted the migration of {table_uri} ({report.done:,} of {report.total:,} rows had the new vectors): "
            f"version {report.version}, run {report.run_id}"
        ),
        soft_wrap=True,
    )
    for warning in report.warnings:
        err_console.print(Text("warning: ", style="yellow") + Text(warning), soft_wrap=True)


@migrate_app.command("fit-map")
def fit_map(
    table_uri: Annotated[str, typer.Argument(metavar="TABLE", help="The migrating table (path or s3://).")],
    sample: Annotated[int, typer.Option("--sample", min=12, help="Migrated rows to fit on, at most.")] = 20_000,
    old: Annotated[
        list[str] | None,
        typer.Option(
            "--old",
            help="Old granularity a new-model query may search through the map (repeatable; default: the richest).",
        ),
    ] = None,
    heldout: Annotated[
        float, typer.Option("--heldout", help="Share of the sample held out to choose and measure each map.")
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the held-out split (by a hash of each row's id).")] = 0,
    endpoint: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Fit the compatibility maps between a migrating table's settings and its migration's, on its migrated rows
    (they carry both vectors: no model runs), and store them next to the table.

    With them `table.search(text, model="new")` searches the whole table with the new model alone: migrated rows
    on their new vectors, the others through the map. Prints each map's quality on the held-out rows.
    """
    from embedder import EmbedderError
    from storage import MigrationError, compat_uri, fit_compat_maps

    tbl = open_table_at(table_uri, endpoint, region)
    olds = [g.strip() for item in old or [] for g in item.split(",") if g.strip()] or None
    try:
        maps = fit_compat_maps(
            tbl.uri, old=olds, sample=sample, heldout_fraction=heldout, seed=seed, storage_options=tbl.storage_options
        )
    except (MigrationError, EmbedderError, ValueError) as exc:
        fail(exc)
    info = maps.info
    head = Table(title=f"compatibility maps {maps.fingerprint}", show_header=False)
    head.add_row("stored at", compat_uri(tbl.uri, maps.fingerprint))
    head.add_row(
        "old settings",
        f"{info.old.model_path} (weights {info.old.weights_fingerprint}, calibration {info.old.calibration or 'none'})",
    )
    head.add_row(
        "new settings",
        f"{info.new.model_path} (weights {info.new.weights_fingerprint}, calibration {info.new.calibration or 'none'})",
    )
    head.add_row(
        "rows",
        f"{info.rows:,} migrated rows ({info.rows - info.heldout_rows:,} to fit, "
        f"{info.heldout_rows:,} held out), seed {info.seed}",
    )
    console.print(head)
    console.print(_quality_table(maps))
    console.print(
        Text(
            "cosine: a held-out row's mapped vector against its own vector; top-1: the share whose own vector is "
            f"the nearest among the {info.checks[0].rows if info.checks else 0:,} checked rows; R²: of the "
            "target's held-out variance",
        ),
        soft_wrap=True,
    )
    console.print(Text(f'Search with the new model alone: open_table("{tbl.uri}").search(text, model="new")'))


def _quality_table(maps) -> Table:
    out = Table(title="held-out quality (ridge strength chosen on the held-out rows)")
    for col in ("new", "old", "new→old R²", "cosine", "top-1", "old→new R²", "cosine", "top-1", "alpha"):
        out.add_column(col, justify="left" if col in ("new", "old") else "right")
    for o, n in maps.pairs:
        to_old, to_new, check = maps.fit("to_old", n, o), maps.fit("to_new", o, n), maps.check(o, n)
        cells = [str(n), str(o), f"{to_old.heldout_r2:.3f}"]
        cells += [f"{check.to_old_cosine:.3f}", f"{check.to_old_top1:.1%}"] if check else ["-", "-"]
        cells.append(f"{to_new.heldout_r2:.3f}")
        cells += [f"{check.to_new_cosine:.3f}", f"{check.to_new_top1:.1%}"] if check else ["-", "-"]
        cells.append(f"{to_old.alpha:.3g} / {to_new.alpha:.3g}")
        out.add_row(*cells)
    return out
