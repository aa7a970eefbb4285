"""One result format for every benchmark: the figures it measured, each with its target and whether it holds.

Each script writes ``{"bench": NAME, "checks": [...], ...}`` with ``--json PATH``;
``python -m bench.suite`` runs them all and prints one table from these files.
A check with ``holds = None`` is context (a figure without a target).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Check", "read_report", "write_report"]


@dataclass(frozen=True)
class Check:
    figure: str
    value: float | str
    target: str
    holds: bool | None

    def shown(self) -> str:
        return f"{self.value:.3f}" if isinstance(self.value, float) else str(self.value)


def write_report(path: Path | None, bench: str, checks: list[Check], **extra: Any) -> None:
    """Write ``checks`` (and any extra figures) as the bench's JSON report; nothing when ``path`` is None."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"bench": bench, "checks": [asdict(c) for c in checks], **extra}
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")


def read_report(path: Path) -> tuple[str, list[Check]]:
    data = json.loads(Path(path).read_text())
    return data.get("bench", Path(path).stem), [Check(**c) for c in data.get("checks", [])]
