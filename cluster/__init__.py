"""Ray: connect, size the actor pool, run read -> encode -> write.

Filled by the jobs issue (see DESIGN.md)."""

from __future__ import annotations

__all__: list[str] = []
