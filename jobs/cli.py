"""The ``embedjob`` command line."""

from __future__ import annotations

import os
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__

app = typer.Typer(
    name="embedjob",
    help="Distributed batch embedding jobs with elastic (layer, dim) granularities.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


@app.command()
def version() -> None:
    """Print the embedjob version."""
    console.print(f"embedjob {__version__}")


@app.command("model-info")
def model_info(
    path: Annotated[str, typer.Argument(help="Local Hugging Face or sentence-transformers model dir.")],
    granularities: Annotated[
        str,
        typer.Option("--granularities", "-g", help="'starbucks' or e.g. 'l3_d64,l6_d384'."),
    ] = "starbucks",
) -> None:
    """Show what a model dir can serve: depth, width, pooling, max length, and the granularities resolved."""
    from embedder import EmbedderError, read_model_dir, resolve_granularities

    try:
        mdir = read_model_dir(path)
        grans = resolve_granularities(
            granularities, num_layers=mdir.num_layers, hidden_size=mdir.hidden_size, model_name=mdir.name
        )
    except EmbedderError as exc:
        _fail(exc)
    table = Table(title=f"{mdir.root}", show_header=False)
    table.add_row("model type", str(mdir.config.get("model_type", "?")))
    table.add_row("layers", f"1..{mdir.num_layers}")
    table.add_row("dims", f"1..{mdir.hidden_size}")
    table.add_row("pooling", mdir.pooling.value if mdir.pooling else "mean (default; no pooling config)")
    table.add_row("max_seq_length", str(mdir.max_seq_length or "model limit"))
    table.add_row("granularities", ", ".join(str(g) for g in grans))
    console.print(table)


def _fail(exc: Exception, code: int = 2) -> NoReturn:
    """Print a user error unwrapped and unstyled (paths may hold brackets), then exit."""
    err_console.print(Text("error: ", style="red") + Text(str(exc)), soft_wrap=True)
    raise typer.Exit(code) from None


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()


if __name__ == "__main__":
    main()
