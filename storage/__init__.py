"""The Lance side: schema, staging, the one commit per run, queries. Knows nothing about Ray.

Filled by the jobs issue (see DESIGN.md)."""

from __future__ import annotations

__all__: list[str] = []
