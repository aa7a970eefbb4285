"""Errors of the cluster layer: user errors (bad input) apart from infrastructure errors."""

from __future__ import annotations

__all__ = ["ClusterError", "SourceError"]


class SourceError(ValueError):
    """The input can't be read as asked: no files match, a format we don't read, a missing column."""


class ClusterError(RuntimeError):
    """Ray could not be reached or could not place the actor pool; the message says what to try."""
