"""No import cycles: every module's imports can be read before it, one way down.

The graph holds every import, those under ``if TYPE_CHECKING:`` too (a cycle
hidden there still ties two modules together), and a package's ``__init__``
counts as a module of its own (``from . import x`` in a submodule imports it).
"""

from __future__ import annotations

import grimp
import pytest

PACKAGES = ("embedder", "storage", "cluster", "jobs")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def import_cycles(graph: grimp.ImportGraph, packages: tuple[str, ...]) -> list[list[str]]:
    """The modules of ``packages`` that import each other in a ring, one sorted list per ring
    (the strongly connected components of the direct-import graph with more than one module, by Tarjan)."""
    modules = sorted(m for m in graph.modules if m.split(".")[0] in packages)
    inside = set(modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & inside) for m in modules}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    rings: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        on_stack.add(module)
        for imported in edges[module]:
            if imported not in order:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], order[imported])
        if low[module] == order[module]:
            ring = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                ring.append(member)
                if member == module:
                    break
            if len(ring) > 1:
                rings.append(sorted(ring))

    for module in modules:
        if module not in order:
            visit(module)
    return sorted(rings)


def test_the_cycle_finder_finds_a_cycle_through_a_type_checking_import(tmp_path, monkeypatch):
    pkg = tmp_path / "ringpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    (pkg / "c.py").write_text("from . import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles(grimp.build_graph("ringpkg", cache_dir=None), ("ringpkg",)) == [["ringpkg.a", "ringpkg.b"]]


def test_embedder_has_no_import_cycle(graph):
    assert import_cycles(graph, ("embedder",)) == []


def test_no_package_has_an_import_cycle(graph):
    assert import_cycles(graph, PACKAGES) == []
