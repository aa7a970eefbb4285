"""The quality gate (a job's ``[gate]`` section): its probe file, and its figure on a committed version.

A probe is a query and the ids a search for it should find. After a run's commit the probes are searched in the
committed version (embedded as its rows were) and the metric (recall@k: the share of each probe's expected ids
among its top ``k``, averaged over the probes) is compared with the floor. The figure goes into the run's
summary; below the floor the run does not pass its checks (:attr:`RunSummary.passed_checks`), so the table's
``latest-good`` tag stays where it was.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage import DOC_ID, open_table

from ._spec import GateSpec

__all__ = ["Probe", "ProbeFileError", "evaluate_gate", "gate_line", "read_probes"]


class ProbeFileError(ValueError):
    """The gate's probe file cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class Probe:
    query: str
    expected: tuple[str, ...]  # ids as text: a table's ids may be strings or integers


def read_probes(path: str) -> list[Probe]:
    """The probes of a JSON-lines file ({"query": "...", "expected": ["id", ...]} a line; blank lines skipped).
    Raises :class:`ProbeFileError` naming the first bad line, or a file that is missing or holds no probe."""
    if "://" in path:
        raise ProbeFileError(f"gate.probes = {path!r}: must be a local file")
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ProbeFileError(f"gate.probes = {path!r}: the file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProbeFileError(f"gate.probes = {path!r}: cannot be read ({exc})") from None
    probes = [_probe(path, n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not probes:
        raise ProbeFileError(f"gate.probes = {path!r}: the file holds no probe")
    return probes


def _probe(path: str, n: int, line: str) -> Probe:
    where = f"gate.probes = {path!r}, line {n}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProbeFileError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(data, dict) or set(data) != {"query", "expected"}:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ProbeFileError(f'{where}: must be an object with exactly "query" and "expected", got {got}')
    query, expected = data["query"], data["expected"]
    if not isinstance(query, str) or not query.strip():
        raise ProbeFileError(f'{where}: "query" must be a non-empty string, got {query!r}')
    ok = isinstance(expected, list) and expected and all(_is_id(i) for i in expected)
    if not ok:
        raise ProbeFileError(
            f'{where}: "expected" must be a non-empty list of ids (strings or integers), got {expected!r}'
        )
    return Probe(query, tuple(str(i) for i in expected))


def _is_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def evaluate_gate(
    gate: GateSpec, uri: str, version: int, storage_options: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The gate's figure on ``version`` of the table at ``uri``: metric, granularity, value, floor, passed, probes.
    A chunked table is probed per document (its ``doc_id``s are the ids)."""
    probes = read_probes(gate.probes)
    table = open_table(uri, version=version, storage_options=storage_options)
    g = table.resolve_granularity(gate.granularity)
    id_column = DOC_ID if table.chunked else "id"
    hits = table.search(
        [p.query for p in probes], g, gate.k, columns=[id_column], per_document=table.chunked
    ).to_pydict()
    found: list[set[str]] = [set() for _ in probes]
    for i, hit in zip(hits["query"], hits[id_column], strict=True):
        found[i].add(str(hit))
    value = sum(len(f & set(p.expected)) / len(p.expected) for p, f in zip(probes, found, strict=True)) / len(probes)
    return {
        "metric": f"{gate.metric}@{gate.k}",
        "granularity": str(g),
        "value": round(value, 4),
        "floor": gate.floor,
        "passed": value >= gate.floor,
        "probes": len(probes),
        "version": version,
    }


def gate_line(gate: Mapping[str, Any]) -> str:
    """The gate's figure in one line: ``quality gate: recall@10 0.41 < floor 0.60 (l6_d384, 12 probes)``."""
    if "error" in gate:
        return f"quality gate: could not be evaluated ({gate['error']})"
    sign = ">=" if gate["passed"] else "<"
    return (
        f"quality gate: {gate['metric']} {gate['value']:.2f} {sign} floor {gate['floor']:.2f} "
        f"({gate['granularity']}, {gate['probes']} probes, version {gate['version']})"
    )
