"""The CLI's consoles and its one way to fail: ``error: <one line>`` on stderr, exit code 2."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

from ._errors import describe_error

__all__ = ["console", "debug_enabled", "err_console", "fail"]

# piped or captured output (logs, CI, the demo) gets wide tables instead of 80-column truncation
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
err_console = Console(stderr=True)


#: set by ``embedjob --debug`` (the app's callback, at every command) or ``EMBEDJOB_DEBUG=1``
debug = False


def debug_enabled() -> bool:
    """Failures show their traceback instead of their one line."""
    return debug or os.environ.get("EMBEDJOB_DEBUG", "") not in ("", "0")


def fail(exc: BaseException, code: int = 2) -> NoReturn:
    """Print a user error as one unstyled line (paths may hold brackets), then exit with ``code``; with
    ``--debug``, raise it instead, traceback and all."""
    if debug_enabled():
        raise exc
    err_console.print(Text("error: ", style="red") + Text(describe_error(exc)), soft_wrap=True)
    raise typer.Exit(code) from None
