"""The layering holds: dependencies point one way (DESIGN.md).

- ``ingest`` never imports ``detectors``, ``tui`` or ``train``;
- the core (``tunescope/`` but the CLI and ``watch``) never imports ``tui``;
- ``detectors`` never import ``tui``;
- nothing imports ``cli`` (it is the top).

Checked on the source (every ``import``, at any depth, lazy ones too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {
    "tunescope": REPO / "tunescope",
    "tunescope.ingest": REPO / "ingest",
    "tunescope.detectors": REPO / "detectors",
    "tunescope.train": REPO / "train",
    "tunescope.tui": REPO / "tui",
}


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def modules(package: str) -> list[tuple[str, Path]]:
    return [(f"{package}.{p.stem}", p) for p in sorted(FOLDERS[package].glob("*.py"))]


RULES = [
    ("tunescope.ingest", ("tunescope.detectors", "tunescope.tui", "tunescope.train")),
    ("tunescope.detectors", ("tunescope.tui",)),
    ("tunescope", ("tunescope.tui",)),
]


@pytest.mark.parametrize("package, forbidden", RULES, ids=[r[0] for r in RULES])
def test_layer(package, forbidden):
    bad = []
    for name, path in modules(package):
        if name in ("tunescope.cli", "tunescope.__main__"):
            continue  # the CLI is the top: it may import everything
        for imp in imports(path):
            if any(imp == f or imp.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(REPO)} imports {imp}")
    assert not bad


def test_nothing_imports_the_cli():
    bad = []
    for package in FOLDERS:
        for name, path in modules(package):
            if name in ("tunescope.cli", "tunescope.__main__"):
                continue
            if any(i == "tunescope.cli" or i.startswith("tunescope.cli.") for i in imports(path)):
                bad.append(str(path.relative_to(REPO)))
    assert not bad
