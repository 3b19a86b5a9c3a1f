"""The real public logs in ``fixtures/real`` hold to their labels
(``fixtures/real/LABELS.json``, rules in ``tunescope/report/scoring.py``): every run
dir is read unless labelled ``expect_read: false`` (and then it is not), every
labelled fault is found at its minimum severity unless labelled ``known_miss``
(and then it is not), and no detector labelled quiet raises a warning or an
error unless labelled in ``known_false_alarms``; ``tunescope analyze`` exits 0
on every healthy one.

``fixtures/real-holdout`` is not judged here: it measures the readers later and
nobody tunes to it. Both folders are checked for provenance and licences in
``test_real_provenance.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunescope.detectors.engine import analyze
from tunescope.ingest.store.database import Store
from tunescope.report.scoring import judge, run_facts

REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real"
LABELS = json.loads((REAL / "LABELS.json").read_text())


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory):
    store = Store.open(REAL, tmp_path_factory.mktemp("real") / "cache")
    findings = analyze(store)
    steps, every, _ = run_facts(store.cursor())
    return {v.label: v for v in judge(LABELS, findings, steps, every)}


@pytest.mark.parametrize("label", sorted(LABELS["runs"]))
def test_real_log_holds_to_its_labels(verdicts, label):
    v = verdicts[label]
    if v.expect_read:
        assert v.read, f"{label}: not read (no run with a loss)"
    else:
        assert not v.read, f"{label}: now read ({v.steps} loss rows): set expect_read to true"
    unexpected = [m for m in v.missed if m not in v.known_misses]
    assert not unexpected, f"{label}: missed {unexpected}"
    assert not v.unexpected_finds, f"{label}: found, remove known_miss: {v.unexpected_finds}"
    alarms = [a for a in v.false_alarms if a not in v.known_alarms]
    assert not alarms, f"{label}: false alarms {alarms}"


def test_a_run_without_a_loss_is_never_expected_to_be_read():
    for label, lab in LABELS["runs"].items():
        if lab.get("has_loss") is False:
            assert lab.get("expect_read") is False, (
                f"{label}: has_loss false, expect_read must be false"
            )
