"""Every module of the trainer imports (with the [train] extra; the folder's
conftest skips this without it), the loggers for other trainers too (their
extras, [lightning] and [torchtune], come with ``make setup-dev``)."""

from __future__ import annotations

import importlib

import pytest
from modules import PACKAGES, modules

TRAIN = tuple(p for p in PACKAGES if p == "tunescope.train" or p.startswith("tunescope.train."))


@pytest.mark.parametrize("name", modules(TRAIN))
def test_train_module_imports(name: str) -> None:
    importlib.import_module(name)
