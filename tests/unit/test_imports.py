"""Every module of the analysis side imports.

A name removed from one module while another still imports it (as when the
number formatters moved to ``tunescope.numbers`` and three detectors kept
``from tunescope.detectors.scans.series import fmt``) breaks the whole detector
registry at import time; this finds it module by module. The trainer's
modules need torch: ``tests/train/test_train_imports.py`` covers them.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from modules import PACKAGES, modules

ANALYSIS = tuple(
    p for p in PACKAGES if p != "tunescope.train" and not p.startswith("tunescope.train.")
)


def test_every_package_is_listed() -> None:
    found = modules(ANALYSIS)
    assert "tunescope.detectors.sibling_gap" in found
    assert "tunescope.ingest.store.database" in found
    assert not any(m.startswith("tunescope.train.") for m in found)


def test_pyproject_lists_every_package_on_disk() -> None:
    """A sub-folder with an ``__init__.py`` that pyproject.toml does not list
    would be left out of the wheel."""
    on_disk = set()
    for name in ("tunescope",):
        pkg = importlib.import_module(name)
        on_disk |= {i.name for i in pkgutil.walk_packages(pkg.__path__, f"{name}.") if i.ispkg} | {
            name
        }
    assert on_disk == set(PACKAGES)


@pytest.mark.parametrize("name", modules(ANALYSIS))
def test_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_registry_holds_the_sibling_detectors() -> None:
    from tunescope.detectors.registry import DETECTORS

    ids = {d.ID for d in DETECTORS}
    assert {"TS501", "TS502"} <= ids
