"""``embedjob migrate ...``: a staged migration's table-level commands (its steps are ``embedjob run --migrate``)."""

from __future__ import annotations

from typing import Annotated

import typer
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
