"""Every module of the trainer imports (with the [train] extra; the folder's
conftest skips this without it)."""

from __future__ import annotations

import importlib

import pytest
from modules import modules


@pytest.mark.parametrize("name", modules(("tunescope.train",)))
def test_train_module_imports(name: str) -> None:
    importlib.import_module(name)
