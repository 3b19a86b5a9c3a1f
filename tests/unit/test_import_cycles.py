"""No import cycle among tunescope's modules, lazy imports included.

A cycle hides an order that nobody wrote down: two modules that import each
other (one of them inside a function, or under ``TYPE_CHECKING``) work only
while the first import happens to come from the right side. The graph is the
one import-linter checks the layers contract on (grimp's, which counts
function-level and ``TYPE_CHECKING`` imports); a cycle is a strongly
connected group of modules in it, reported with the lines that close it.
The fix is the one the layers want: the shared part moves down to a lower
module (a Protocol of the fields a scan reads, a helper both emitters use).
"""

from __future__ import annotations

import grimp
import pytest
from modules import PACKAGES


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("tunescope", include_external_packages=False, cache_dir=None)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of two or more modules that reach each other (and a module
    that imports itself), each sorted; Tarjan's algorithm without recursion."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(sorted(edges[root])))]
        while work:
            node, targets = work[-1]
            for nxt in targets:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1 or node in edges[node]:
                        found.append(sorted(group))
    return found


def test_cycles_finds_a_loop_and_nothing_else() -> None:
    edges = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},
        "d": set(),
        "e": {"e"},
        "f": {"d"},
    }
    assert sorted(cycles(edges)) == [["a", "b", "c"], ["e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_holds_every_package(graph: grimp.ImportGraph) -> None:
    """The mapped folders are seen through the ``make links`` links; without
    them the graph would miss ``ingest/``, ``detectors/``... and pass."""
    missing = sorted(set(PACKAGES) - graph.modules)
    assert not missing, f"not in the import graph: {missing} (run `make links`)"


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    report = []
    for group in cycles(edges):
        members = set(group)
        lines = []
        for importer in group:
            for imported in sorted(edges[importer] & members):
                details = graph.get_import_details(importer=importer, imported=imported)
                at = ", ".join(str(d["line_number"]) for d in details)
                lines.append(f"    {importer} -> {imported} (line {at})")
        report.append(f"  {' <-> '.join(group)}:\n" + "\n".join(lines))
    assert not report, "import cycles:\n" + "\n".join(report)
