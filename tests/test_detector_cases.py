"""Every detector case under tests/cases/ (format: tests/detector_cases.py).

Each case's runs are written with EventWriter into tmp_path, ingested with
``Store.open``, analysed with ``analyze`` (the case's select and config), and
the findings checked against the case's expectations: the expected findings
appear and no unexpected warning or error does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from detector_cases import case_files, check_case, load_case, write_case

from tunescope.config import parse_config
from tunescope.detectors.engine import analyze
from tunescope.ingest.store import Store

CASES = case_files()


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path, tmp_path):
    case = load_case(path)
    root = tmp_path / "runs"
    write_case(case, root)
    store = Store.open(root, tmp_path / "cache")
    cfg = parse_config(dict(case.get("config") or {}))
    findings = analyze(store, select=case.get("select"), config=cfg)
    problems = check_case(case, findings)
    assert not problems, f"{path.name}: {case.get('description', '')}\n" + "\n".join(problems)


def test_cases_exist():
    assert len(CASES) >= 10
