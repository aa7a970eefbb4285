"""An error from a library, quoted in one of embedjob's own messages or logs."""

from __future__ import annotations

import re

__all__ = ["drop_source_locations", "error_line"]

# where in Lance's or Arrow's Rust sources an error was raised: noise for a user
_SOURCE_LOCATION = re.compile(r",?\s*(?:\S*/)?(?:src|rust)/\S+\.rs:\d+:\d+")


def error_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, white space folded, Rust source locations dropped, at most
    ``limit`` characters: a library's error (botocore, pyarrow, Lance, Ray) as one readable line."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    first = _SOURCE_LOCATION.sub("", " ".join(lines[0].split())) if lines else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def drop_source_locations(text: str) -> str:
    """``text`` without the Rust source locations Lance appends to its errors."""
    return _SOURCE_LOCATION.sub("", text)
