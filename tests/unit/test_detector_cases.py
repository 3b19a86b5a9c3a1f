"""Every detector case under tests/unit/cases/, run by this one harness.

Two case dialects share it: the general one (``tests/helpers/detector_cases.py``:
a list of runs with generated curves, ``expect``/``allow``) and the systems
one in ``tests/unit/cases/systems/`` (``tests/helpers/casegen.py``: runs by name and rank,
per-rank metric generators, ``expect``/``forbid``), whose many-rank timing and
memory curves are easier to state per rank. Either way the runs are written
with EventWriter into tmp_path, ingested with ``Store.open``, analysed with
``analyze`` (the case's select and config), and the findings checked against
the case's expectations.
"""

from __future__ import annotations

from pathlib import Path

import casegen
import pytest
from detector_cases import case_files, check_case, load_case, write_case

from tunescope.config import parse_config
from tunescope.detectors.engine import analyze
from tunescope.ingest.store import Store

SYSTEMS = sorted((Path(__file__).parent / "cases" / "systems").glob("*.yaml"))
CASES = case_files() + SYSTEMS
SYSTEMS_IDS = ["TS201", "TS301", "TS302", "TS401"]


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path, tmp_path):
    case = load_case(path)
    assert case.get("description"), f"{path.name}: add a one-line description"
    root = tmp_path / "runs"
    systems = isinstance(case.get("runs"), dict)
    (casegen.write_case if systems else write_case)(case, root)
    store = Store.open(root, tmp_path / "cache")
    cfg = parse_config(dict(case.get("config") or {}))
    select = case.get("select") or (SYSTEMS_IDS if systems else None)
    findings = analyze(store, select=select, config=cfg)
    problems = (casegen.check if systems else check_case)(case, findings)
    shown = "\n".join(
        f"  {f.severity.value} {f.detector} {f.run} rank={f.rank} "
        f"{f.step_start}-{f.step_end}: {f.message}"
        for f in findings
    )
    assert not problems, (
        f"{path.name}: {case.get('description', '')}\n" + "\n".join(problems) + "\n" + shown
    )


def test_cases_exist():
    assert len(case_files()) >= 10 and len(SYSTEMS) >= 10
