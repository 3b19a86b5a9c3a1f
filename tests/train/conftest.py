"""The tests here train a model, so they need the ``[train]`` extra (torch,
transformers, peft). Without it, each module is reported as one skip that says
how to install it, instead of failing collection on ``import torch``."""

from __future__ import annotations

import importlib.util

import pytest

TRAIN_EXTRA = ("torch", "transformers", "peft")


def _missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


MISSING = [name for name in TRAIN_EXTRA if _missing(name)]
REASON = (
    f"needs the [train] extra ({', '.join(MISSING)} not installed): "
    "run `make setup-dev`, or `pip install -e '.[dev,train]'` in this clone"
)


class _NeedsTrainExtra(pytest.Module):
    """A test module that is not imported: it would fail on ``import torch``."""

    def collect(self):
        pytest.skip(REASON)


def pytest_pycollect_makemodule(module_path, parent):
    if MISSING:
        return _NeedsTrainExtra.from_parent(parent, path=module_path)
    return None
