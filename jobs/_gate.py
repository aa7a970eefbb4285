"""The quality gate (a job's ``[gate]`` section): its probe file, and its figure on a committed version.

A probe is a query and the ids a search for it should find. After a run's commit the probes are searched in the
committed version (embedded as its rows were) and the metric (recall@k: the share of each probe's expected ids
among its top ``k``, averaged over the probes) is compared with the floor. ``probes = "previous"`` compares
instead with the table's ``latest-good`` version: for a sample of its rows, the share of their top ``k``
neighbours (themselves left out) that the new version finds too (overlap@k). The figure goes into the run's
summary; below the floor the run does not pass its checks (:attr:`RunSummary.passed_checks`), so the table's
``latest-good`` tag stays where it was.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedder import Granularity
from storage import DOC_ID, LATEST_GOOD, EmbeddingTable, open_table, vector_column

from ._spec import PREVIOUS, GateSpec

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
    """The gate's figure on ``version`` of the table at ``uri``: metric, granularity, value, floor, passed, and
    probes (how many queries or sampled rows). "previous" with no ``latest-good`` version other than this one, or
    one without the granularity (a backfill's new column), has nothing to compare: it passes with value None."""
    table = open_table(uri, version=version, storage_options=storage_options)
    g = table.resolve_granularity(gate.granularity)
    if gate.probes == PREVIOUS:
        value, probes = _overlap(gate, table, g, storage_options)
    else:
        value, probes = _recall(gate, table, g)
    return {
        "metric": f"{gate.metric}@{gate.k}",
        "granularity": str(g),
        "value": None if value is None else round(value, 4),
        "floor": gate.floor,
        "passed": value is None or value >= gate.floor,
        "probes": probes,
        "version": version,
    }


def _recall(gate: GateSpec, table: EmbeddingTable, g: Granularity) -> tuple[float, int]:
    """Mean recall@k of the probe file's expected ids; a chunked table is searched per document."""
    probes = read_probes(gate.probes)
    id_column = DOC_ID if table.chunked else "id"
    queries = [p.query for p in probes]
    hits = table.search(queries, g, gate.k, columns=[id_column], per_document=table.chunked).to_pydict()
    found: list[set[str]] = [set() for _ in probes]
    for i, hit in zip(hits["query"], hits[id_column], strict=True):
        found[i].add(str(hit))
    recall = sum(len(f & set(p.expected)) / len(p.expected) for p, f in zip(probes, found, strict=True))
    return recall / len(probes), len(probes)


def _overlap(
    gate: GateSpec, table: EmbeddingTable, g: Granularity, storage_options: Mapping[str, str] | None
) -> tuple[float | None, int]:
    """Mean overlap@k between each sampled row's neighbours in ``table`` and in its ``latest-good`` version."""
    good = table.tags().get(LATEST_GOOD)
    if good is None or good == table.version:
        return None, 0
    previous = open_table(table.uri, version=good, storage_options=storage_options)
    if g not in previous.granularities:
        return None, 0
    ids = previous.to_arrow(["id"]).column("id").to_pylist()
    sample = random.Random(0).sample(sorted(ids), min(gate.sample, len(ids)))
    new, old = _vectors(table, g, sample), _vectors(previous, g, sample)
    shared = [i for i in sample if i in new]  # rows the run deleted are not compared
    if not shared:
        return 0.0, 0
    overlap = sum(
        len(_neighbours(table, g, new[i], i, gate.k) & _neighbours(previous, g, old[i], i, gate.k)) / gate.k
        for i in shared
    )
    return overlap / len(shared), len(shared)


def _vectors(table: EmbeddingTable, g: Granularity, ids: Sequence[Any]) -> dict[Any, Any]:
    """id -> its vector at ``g``, for those of ``ids`` the table has."""
    literals = ", ".join(str(i) if isinstance(i, int) else "'" + str(i).replace("'", "''") + "'" for i in ids)
    rows = table.dataset.to_table(columns=["id", vector_column(g)], filter=f"id IN ({literals})").to_pydict()
    return dict(zip(rows["id"], rows[vector_column(g)], strict=True))


def _neighbours(table: EmbeddingTable, g: Granularity, vector: Any, own: Any, k: int) -> set[Any]:
    """The ids of ``vector``'s ``k`` nearest rows in ``table``, the row ``own`` left out."""
    hits = table.search_vector(vector, g, k + 1, columns=["id"]).column("id").to_pylist()
    return set([i for i in hits if i != own][:k])


def gate_line(gate: Mapping[str, Any]) -> str:
    """The gate's figure in one line: ``quality gate: recall@10 0.41 < floor 0.60 (l6_d384, 12 probes)``."""
    if "error" in gate:
        return f"quality gate: could not be evaluated ({gate['error']})"
    if gate["value"] is None:
        return f"quality gate: {gate['metric']}: no previous good version to compare with (passed)"
    sign = ">=" if gate["passed"] else "<"
    return (
        f"quality gate: {gate['metric']} {gate['value']:.2f} {sign} floor {gate['floor']:.2f} "
        f"({gate['granularity']}, {gate['probes']} probes, version {gate['version']})"
    )
