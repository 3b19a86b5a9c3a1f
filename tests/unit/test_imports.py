"""Every module of the analysis side imports.

A name removed from one module while another still imports it (as when the
number formatters moved to ``tunescope.numbers`` and three detectors kept
``from tunescope.detectors.series import fmt``) breaks the whole detector
registry at import time; this finds it module by module. The trainer's
modules need torch: ``tests/train/test_train_imports.py`` covers them.
"""

from __future__ import annotations

import importlib

import pytest
from modules import PACKAGES, modules

ANALYSIS = tuple(p for p in PACKAGES if p != "tunescope.train")


def test_every_package_is_listed() -> None:
    found = modules(ANALYSIS)
    assert "tunescope.detectors.sibling_gap" in found
    assert "tunescope.ingest.store" in found
    assert not any(m.startswith("tunescope.train.") for m in found)


@pytest.mark.parametrize("name", modules(ANALYSIS))
def test_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_registry_holds_the_sibling_detectors() -> None:
    from tunescope.detectors.registry import DETECTORS

    ids = {d.ID for d in DETECTORS}
    assert {"TS501", "TS502"} <= ids
