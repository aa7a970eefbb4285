"""One line for every failure a user can meet: what went wrong, naming the value, and what to do.

embedjob's own errors already read that way; errors from the libraries under it
(botocore, pyarrow, Lance, Ray) are turned into such a line here, and anything
else becomes its first line plus a pointer to ``--debug``.
"""

from __future__ import annotations

import re

__all__ = ["describe_error"]

# where in Lance's or Arrow's Rust sources an error was raised: noise for a user
_SOURCE_LOCATION = re.compile(r",?\s*(?:\S*/)?(?:src|rust)/\S+\.rs:\d+:\d+")


def describe_error(exc: BaseException) -> str:
    """``exc`` as one line for a person."""
    if getattr(exc, "problems", None) and len(exc.problems) > 1:  # a job file's problems: one line each
        return str(exc)
    text = _SOURCE_LOCATION.sub("", " ".join(str(exc).split())) or type(exc).__name__
    if _is_ours(exc):
        return text
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    line = _SOURCE_LOCATION.sub("", " ".join(first.split()))
    if len(line) > 300:
        line = line[:299] + "…"
    return f"{type(exc).__name__}: {line} (embedjob --debug ... shows the traceback)"


def _is_ours(exc: BaseException) -> bool:
    """Errors embedjob raises on purpose: their text is written for people already."""
    module = type(exc).__module__.split(".")[0]
    return module in ("jobs", "storage", "cluster", "embedder") or type(exc) is ValueError
