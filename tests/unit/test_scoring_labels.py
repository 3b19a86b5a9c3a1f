"""The label keys that mark what today's readers and detectors cannot do
(``expect_read``, ``known_miss``, ``known_false_alarms``) and the keys that only
describe a log (``has_loss``, ``shape``, ``trainer``, ``death``)."""

from __future__ import annotations

from tunescope.findings import Finding, Severity
from tunescope.report.scoring import judge


def _f(run: str, detector: str, sev: str, step: int | None) -> Finding:
    return Finding(run, detector, "x", Severity(sev), step, step, "m", "s")


DEATH = {"cause": "cuda_oom", "step": 40, "line": "torch.OutOfMemoryError: CUDA out of memory."}


def _labels(**run) -> dict:
    base = {"healthy": False, "faults": [], "quiet": [], "has_loss": True, "shape": "kv_lines"}
    return {"runs": {"r": base | run}}


def test_descriptive_keys_are_not_judged():
    labels = _labels(trainer="home-made loop", death=DEATH)
    (v,) = judge(labels, [], {"r": 10})
    assert v.ok and v.as_labelled and v.expect_read


def test_a_known_miss_is_reported_and_allowed():
    fault = {"detector": "TS601", "first_step": 40, "last_step": 40, "min_severity": "error"}
    labels = _labels(death=DEATH, faults=[fault | {"known_miss": "no TS601 yet"}])
    (v,) = judge(labels, [], {"r": 10})
    assert v.missed == v.known_misses == ["TS601@40-40 (>= error): got nothing"]
    assert not v.ok and v.as_labelled


def test_a_miss_without_the_key_is_not_allowed():
    fault = {"detector": "TS601", "first_step": 40, "last_step": 40, "min_severity": "error"}
    (v,) = judge(_labels(faults=[fault]), [], {"r": 10})
    assert v.missed and not v.known_misses and not v.as_labelled


def test_finding_a_known_miss_asks_for_the_key_to_go():
    fault = {"detector": "TS601", "first_step": 40, "last_step": 40, "min_severity": "error"}
    labels = _labels(faults=[fault | {"known_miss": "no TS601 yet"}])
    (v,) = judge(labels, [_f("r", "TS601", "error", 40)], {"r": 10})
    assert v.found and v.unexpected_finds and not v.as_labelled


def test_expect_read_false_allows_an_unread_run_and_catches_a_newly_read_one():
    labels = _labels(expect_read=False)
    (unread,) = judge(labels, [], {})
    assert not unread.read and not unread.expect_read and unread.as_labelled
    (now_read,) = judge(labels, [], {"r": 5})
    assert now_read.read and not now_read.as_labelled


def test_known_false_alarms_are_reported_and_allowed():
    labels = _labels(healthy=True, quiet=["TS101", "TS102"], known_false_alarms=["TS101"])
    (v,) = judge(labels, [_f("r", "TS101", "warning", 7)], {"r": 10})
    assert v.false_alarms == v.known_alarms and v.as_labelled and not v.ok
    (w,) = judge(labels, [_f("r", "TS102", "warning", 7)], {"r": 10})
    assert w.false_alarms and not w.known_alarms and not w.as_labelled


def test_a_superseding_finding_reports_the_fault_it_covers():
    # TS102 supersedes TS101: a spike that never came back is one incident, one finding
    fault = {"detector": "TS101", "first_step": 3, "last_step": 4, "min_severity": "warning"}
    (v,) = judge(_labels(faults=[fault]), [_f("r", "TS102", "error", 3)], {"r": 4})
    assert v.found == ["TS101@3-4 (>= warning): error at 3 (as TS102)"] and v.ok


def test_a_finding_of_an_unrelated_detector_does_not_report_the_fault():
    fault = {"detector": "TS101", "first_step": 3, "last_step": 4, "min_severity": "warning"}
    (v,) = judge(_labels(faults=[fault]), [_f("r", "TS103", "warning", 3)], {"r": 4})
    assert v.missed and not v.found
