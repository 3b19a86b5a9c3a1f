"""Every detector case under tests/unit/cases/ (subfolders included), run by this one harness.

The case format, its generator and its checker are ``tests/helpers/detector_cases.py``.
Each case's runs are written with EventWriter into tmp_path, ingested with
``Store.open``, analysed with ``analyze`` (the case's select and config), and
the findings checked against the case's expectations.
"""

from __future__ import annotations

import pytest
from detector_cases import CASES_DIR, case_files, check_case, load_case, write_case

from tunescope.config import parse_config
from tunescope.detectors.engine import analyze
from tunescope.ingest.store.database import Store

CASES = case_files()


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path, tmp_path):
    case = load_case(path)
    assert case.get("description"), f"{path.name}: add a one-line description"
    root = tmp_path / "runs"
    write_case(case, root)
    store = Store.open(root, tmp_path / "cache")
    cfg = parse_config(dict(case.get("config") or {}))
    findings = analyze(store, select=case.get("select"), config=cfg)
    store.close()
    problems = check_case(case, findings)
    shown = "\n".join(
        f"  {f.severity.value} {f.detector} {f.run} rank={f.rank} "
        f"{f.step_start}-{f.step_end}: {f.message}"
        for f in findings
    )
    assert not problems, (
        f"{path.name}: {case.get('description', '')}\n" + "\n".join(problems) + "\n" + shown
    )


def test_cases_exist():
    assert len(CASES) >= 70
    assert len(list((CASES_DIR / "systems").glob("*.yaml"))) >= 30
