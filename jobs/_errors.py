"""One line for every failure a user can meet: what went wrong, naming the value, and what to do.

embedjob's own errors already read that way; errors from the libraries under it
(botocore, pyarrow, Lance, Ray) become their type and first line, with a
pointer to ``--debug``.
"""

from __future__ import annotations

from storage import drop_source_locations, error_line

__all__ = ["describe_error"]


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
