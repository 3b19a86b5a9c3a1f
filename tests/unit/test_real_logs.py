"""The real public logs in ``fixtures/real`` hold to their labels
(``fixtures/real/LABELS.json``, rules in ``detectors/scoring.py``): every run
dir is read, every labelled fault is found at its minimum severity, and no
detector labelled quiet raises a warning or an error; ``tunescope analyze``
exits 0 on every healthy one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunescope.detectors.engine import analyze
from tunescope.detectors.scoring import judge
from tunescope.ingest.store import Store

REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real"
LABELS = json.loads((REAL / "LABELS.json").read_text())


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory):
    store = Store.open(REAL, tmp_path_factory.mktemp("real") / "cache")
    findings = analyze(store)
    cur = store.cursor()
    steps = dict(
        cur.execute(
            "SELECT r.run_id, count(s.loss) FROM runs r LEFT JOIN steps s USING (run_id) "
            "GROUP BY r.run_id"
        ).fetchall()
    )
    every = {
        run: json.loads(p).get("logging_steps") or 1
        for run, p in cur.execute(
            "SELECT run_id, payload::VARCHAR FROM events WHERE kind = 'run_start'"
        ).fetchall()
    }
    return {v.label: v for v in judge(LABELS, findings, steps, every)}


@pytest.mark.parametrize("label", sorted(LABELS["runs"]))
def test_real_log_holds_to_its_labels(verdicts, label):
    v = verdicts[label]
    assert v.read, f"{label}: not read (no run with a loss)"
    assert not v.missed, f"{label}: missed {v.missed}"
    assert not v.false_alarms, f"{label}: false alarms {v.false_alarms}"
