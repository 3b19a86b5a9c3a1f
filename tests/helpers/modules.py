"""The modules of tunescope's packages, found on disk through each package's
``__path__`` (so the mapped folders, ``ingest/`` and the others, are found
without the ``make links`` links)."""

from __future__ import annotations

import importlib
import pkgutil

# the packages pyproject.toml installs (detectors/vendor holds data only)
PACKAGES = (
    "tunescope",
    "tunescope.alerts",
    "tunescope.cli",
    "tunescope.ingest",
    "tunescope.detectors",
    "tunescope.train",
    "tunescope.tui",
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
