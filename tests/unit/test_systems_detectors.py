"""The systems detectors (TS201 adapter gradients, TS301 stragglers, TS302
throughput, TS401 memory growth) on the YAML cases in ``tests/unit/cases/systems/``.

Each case is written as real event logs with ``EventWriter``, ingested into a
real store, and every one of the four detectors runs on it (with the case's
``config`` overrides), so a case also checks that the other three stay quiet.
The case format and its generator are documented in ``tests/helpers/detector_cases.py``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest
import yaml
from detector_cases import check_case, write_case

from tunescope.detectors.base import Context
from tunescope.ingest.store.database import Store

CASES = Path(__file__).parent / "cases" / "systems"
MODULES = {
    "TS201": "tunescope.detectors.adapter_grads",
    "TS301": "tunescope.detectors.straggler",
    "TS302": "tunescope.detectors.throughput",
    "TS401": "tunescope.detectors.memory_growth",
}
FILES = sorted(
    p for pat in ("ts201_*", "ts301_*", "ts302_*", "ts401_*") for p in CASES.glob(pat + ".yaml")
)


def run_case(case: dict, tmp_path: Path) -> list:
    root = tmp_path / "runs"
    write_case(case, root)
    store = Store.open(root, cache_dir=tmp_path / "cache")
    ctx = Context(store)
    findings = []
    config = case.get("config") or {}
    for det_id, modname in MODULES.items():
        mod = importlib.import_module(modname)
        opts = mod.Options(**_coerce(mod.Options, config.get(det_id, {})))
        for f in mod.run(ctx, opts):
            assert f.detector == det_id == mod.ID
            assert f.name == mod.NAME
            assert f.message.endswith(f"See `tunescope explain {det_id}`.")
            assert f.suggestion
            json.dumps(f.to_dict(), allow_nan=False)  # evidence is plain JSON
            findings.append(f)
    store.close()
    return findings


def _coerce(cls: type, overrides: dict) -> dict:
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    out = {}
    for k, v in overrides.items():
        if k not in types:
            raise KeyError(f"{cls.__module__}.Options has no field {k!r}")
        out[k] = tuple(v) if isinstance(v, list) else v
    return out


@pytest.mark.parametrize("path", FILES[::4], ids=[p.stem for p in FILES[::4]])
def test_findings_carry_their_contract(path: Path, tmp_path: Path) -> None:
    """Findings of each systems detector, called directly: id, name, the pointer
    to ``explain``, a suggestion and plain-JSON evidence. (Verdicts on every
    case are checked through ``analyze`` by tests/unit/test_detector_cases.py.)"""
    case = yaml.safe_load(path.read_text())
    findings = run_case(case, tmp_path)
    assert not check_case(case, findings)
