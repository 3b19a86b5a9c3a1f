"""Every registered detector follows the module contract (detectors/base.py)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from tunescope.detectors.registry import DETECTORS
from tunescope.report.explain import explain_text, option_docs

SECTIONS = ("What it flags:", "Why it matters:", "Example:", "Suggestion:", "Options:")


def test_ids_are_unique_and_well_formed():
    ids = [d.ID for d in DETECTORS]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"TS\d{3}", i) for i in ids)
    assert all(re.fullmatch(r"[a-z0-9-]+", d.NAME) for d in DETECTORS)


@pytest.mark.parametrize("det", DETECTORS, ids=[d.ID for d in DETECTORS])
def test_module_contract(det):
    doc = det.__doc__ or ""
    assert doc.startswith(det.ID), "the docstring's first line starts with the id"
    positions = [doc.find(s) for s in SECTIONS]
    assert all(p > 0 for p in positions), f"missing sections in {det.ID}"
    assert positions == sorted(positions), "sections in the fixed order"
    assert dataclasses.is_dataclass(det.Options)
    opts = det.Options()  # every option has a default
    fields = dataclasses.fields(det.Options)
    docs = option_docs(det.Options)
    assert {f.name for f in fields} == set(docs), "a docstring under every option"
    for f in fields:
        assert f.type in ("int", "float", "bool", "str", "list[int]", "list[float]", "list[str]"), (
            f"{det.ID}.{f.name}: a plain TOML type"
        )
    assert callable(det.run)
    text = explain_text(det)
    assert all(f.name.replace("_", "-") in text for f in fields)
    assert opts == det.Options()
