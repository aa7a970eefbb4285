"""The CLI's consoles and its one way to fail: ``error: <one line>`` on stderr, exit code 2.

One line for every failure a user can meet: what went wrong, naming the value, and what to do.
embedjob's own errors already read that way; errors from the libraries under it
(botocore, pyarrow, Lance, Ray) become their type and first line, with a
pointer to ``--debug``.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

from storage import drop_source_locations, error_line

__all__ = ["console", "debug_enabled", "describe_error", "err_console", "fail"]

# piped or captured output (logs, CI, the demo) gets wide tables instead of 80-column truncation
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
err_console = Console(stderr=True)


#: set by ``embedjob --debug`` (the app's callback, at every command) or ``EMBEDJOB_DEBUG=1``
debug = False
#: set by ``embedjob -v``: Ray Data's INFO logs and Lance's warnings are shown
verbose = False


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


def describe_error(exc: BaseException) -> str:
    """``exc`` as one line for a person (a job file's several problems: one line each)."""
    if getattr(exc, "problems", None) and len(exc.problems) > 1:
        return str(exc)
    if _is_ours(exc):
        return drop_source_locations(" ".join(str(exc).split())) or type(exc).__name__
    return f"{error_line(exc)} (embedjob --debug ... shows the traceback)"


def _is_ours(exc: BaseException) -> bool:
    """Errors embedjob raises on purpose: their text is written for people already."""
    module = type(exc).__module__.split(".")[0]
    return module in ("jobs", "storage", "cluster", "embedder") or type(exc) is ValueError
