"""The modules of tunescope's packages, found on disk through each package's
``__path__`` (so the mapped folders, ``ingest/`` and the others, are found
without the ``make links`` links)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]

# the packages pyproject.toml installs (report/vendor holds data only)
PACKAGES = tuple(
    p
    for p in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    if not p.endswith(".vendor")
)


def modules(packages: tuple[str, ...]) -> list[str]:
    """Every module of ``packages`` (not their subpackages' own, which are
    listed as packages), ``__main__`` left out: importing it runs the CLI."""
    out = []
    for name in packages:
        pkg = importlib.import_module(name)
        out.append(name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.ispkg and info.name != "__main__":
                out.append(f"{name}.{info.name}")
    return sorted(out)
