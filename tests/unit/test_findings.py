"""The shared finding helpers: one step-range text for watch, alerts and reports."""

from __future__ import annotations

import json
import math

import numpy as np

from tunescope.alerts import Alert
from tunescope.findings import Finding, Severity, step_range


def make(start, end) -> Finding:
    return Finding("r", "TS101", "spike", Severity.WARNING, start, end, "m", "s", rank=0)


def test_step_range_of_findings_and_dicts():
    for start, end, text in [
        (120, 131, "steps 120-131"),
        (7, 7, "step 7"),
        (7, None, "step 7"),
        (0, 0, "step 0"),
        (None, None, ""),
    ]:
        f = make(start, end)
        assert step_range(f) == text
        assert step_range(f.to_dict()) == text
        assert step_range({"step_start": start, "step_end": end}) == text
    assert step_range(make(None, None), "whole run") == "whole run"
    assert step_range({}, "no step") == "no step"


def test_alert_lines_use_the_shared_step_range():
    assert Alert(make(3, 5)).describe().endswith("(steps 3-5)")
    assert "(" not in Alert(make(None, None)).describe().split("r rank 0")[1]


def test_a_finding_round_trips_through_json():
    f = Finding(
        "r", "TS101", "spike", Severity.WARNING, 3, 9, "m", "s", rank=1,
        evidence={"ratio": math.inf, "peak": np.float32(2.5), "ids": (4, 5)},
    )  # fmt: skip
    data = json.loads(json.dumps(f.to_dict(), allow_nan=False))
    assert list(data) == [
        *("run", "rank", "detector", "name", "severity", "step_start", "step_end"),
        *("message", "suggestion", "evidence"),
    ]
    assert data["evidence"] == {"ratio": "Infinity", "peak": 2.5, "ids": [4, 5]}
    back = Finding.from_dict(data)
    assert back.severity is Severity.WARNING and back.rank == 1
    assert back.to_dict() == data


def test_from_dict_needs_only_the_run_and_the_detector():
    f = Finding.from_dict({"run": "r", "detector": "TS001"})
    assert (f.name, f.severity, f.step_start, f.message, f.evidence) == (
        "TS001",
        Severity.WARNING,
        None,
        "",
        {},
    )
