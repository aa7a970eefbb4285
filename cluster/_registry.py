"""The run's id registry: which row keeps each id (duplicates go to rejects)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["IdRegistry"]


class IdRegistry:
    """Remembers which row claimed each id in this run; the first claimant keeps the id.

    Runs as one Ray actor holding ids and 16-byte row keys (not text), off the
    driver. Claims are idempotent: a retried task presents the same row keys
    and wins the same ids again.
    """

    def __init__(self) -> None:
        self._owner: dict[Any, bytes] = {}

    def claim(self, ids: Sequence[Any], keys: Sequence[bytes]) -> list[bool]:
        out = []
        for i, key in zip(ids, keys, strict=True):
            owner = self._owner.setdefault(i, key)
            out.append(owner == key)
        return out

    def size(self) -> int:
        return len(self._owner)
