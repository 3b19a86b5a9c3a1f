"""The detector-case generator and checker (``tests/helpers/detector_cases.py``):
seeds per rank, modifiers in the order written, what is not logged, timestamps,
and the strict expect/allow rules."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from detector_cases import check_case, expand_case, series, write_case

from tunescope.findings import Severity


def _steps(case: dict, run: str = "run", rank: int = 0) -> list[dict]:
    return [e for e in expand_case(case)[run][rank] if e["kind"] == "step"]


def _case(items: list[dict], ranks: str = "0") -> dict:
    return {"runs": {"run": {"ranks": {ranks: items}}}}


BLOCK = {"generate": "steps", "from": 1, "to": 50, "seed": 3, "loss": {"value": 2.0, "noise": 0.1}}


def test_rank_r_draws_from_seed_plus_1000_r():
    two = _steps(_case([BLOCK], "0,1"), rank=1)
    other = _steps(_case([{**BLOCK, "seed": 1003}]))
    assert [e["loss"] for e in two] == [e["loss"] for e in other]
    assert two[0]["loss"] != _steps(_case([BLOCK]))[0]["loss"]


def test_modifiers_apply_in_the_order_written():
    steps = np.arange(1, 11)
    rng = np.random.default_rng(0)
    scale_then_add = series({"value": 1.0, "scale": {"by": 3}, "add": {"value": 1}}, steps, rng)
    add_then_scale = series({"value": 1.0, "add": {"value": 1}, "scale": {"by": 3}}, steps, rng)
    assert scale_then_add is not None and add_then_scale is not None
    assert scale_then_add[0][0] == 4.0 and add_then_scale[0][0] == 6.0


def test_ranges_set_and_not_logged():
    spec = {
        "start": 2.0,
        "end": 1.0,
        "tau": 10,
        "scale": {"from": 5, "to": 5, "by": 3},
        "ramp": {"from": 8, "rate": 0.5},
        "set": [{"from": 3, "to": 3, "value": None}, {"from": 10, "value": "nan"}],
    }
    block = {"generate": "steps", "from": 1, "to": 10, "loss": spec, "gone": None}
    rows = _steps(_case([block]))
    loss = {e["step"]: e.get("loss") for e in rows}
    assert loss[1] == 2.0 and loss[2] == pytest.approx(1 + math.exp(-0.1))
    assert "loss" not in rows[2] and "gone" not in rows[0]  # step 3; never logged
    assert loss[5] == pytest.approx(3 * (1 + math.exp(-0.4)))
    assert loss[9] == pytest.approx((1 + math.exp(-0.8)) * math.exp(0.5))
    assert math.isnan(loss[10])


def test_sparse_blocks_timestamps_and_events():
    block = {
        "generate": "steps",
        "from": 10,
        "to": 40,
        "every": 10,
        "dt": 10,
        "sample_ids": True,
        "loss": 1.0,
        "grad_norm": {"value": 0.5, "log_every": 20},
    }
    items = [
        {"kind": "run_start", "world_size": 1},
        block,
        {"kind": "eval", "step": 25, "eval_loss": 1.1},
        {"generate": "events", "kind": "checkpoint", "every": 20, "to": 40},
        {"kind": "run_end", "status": "completed"},
    ]
    events = expand_case(_case(items))["run"][0]
    steps = [e for e in events if e["kind"] == "step"]
    assert [e["step"] for e in steps] == [10, 20, 30, 40]
    assert [e["ts"] - events[0]["ts"] for e in steps] == [10, 20, 30, 40]
    assert ["grad_norm" in e for e in steps] == [False, True, False, True]
    assert steps[0]["sample_ids"] == [20, 21]
    by_kind = {e["kind"]: e for e in events}
    assert by_kind["eval"]["ts"] == steps[1]["ts"]  # the last step at or before 25
    assert [e["path"] for e in events if e["kind"] == "checkpoint"] == [
        "ckpt/step-20",
        "ckpt/step-40",
    ]
    assert by_kind["run_end"]["ts"] == steps[-1]["ts"]


def test_write_case_writes_the_same_lines_either_way(tmp_path):
    case = _case(
        [{"kind": "run_start", "world_size": 2}, BLOCK, {"kind": "run_end", "status": "completed"}],
        "0-1",
    )
    write_case(case, tmp_path / "slow")
    write_case(case, tmp_path / "fast", fast=True)
    for rank in (0, 1):
        lines = [
            [json.loads(x) for x in (tmp_path / d / "run/events" / f"rank-{rank}.jsonl").open()]
            for d in ("slow", "fast")
        ]
        assert len(lines[0]) == len(lines[1]) == 52
        for a, b in zip(*lines, strict=True):
            assert (a["kind"], a["rank"], a.get("step")) == (b["kind"], b["rank"], b.get("step"))
            assert (a["ts"], a.get("loss")) == pytest.approx((b["ts"], b.get("loss")))


def test_unknown_modifier_or_decay_is_an_error():
    with pytest.raises(ValueError, match="decay"):
        series({"peak": 1e-4, "decay": "cosne"}, np.arange(1, 5), np.random.default_rng(0))


@dataclass
class F:
    detector: str
    severity: Severity
    rank: int | None = None
    step_start: int | None = None
    step_end: int | None = None
    run: str = "run"
    message: str = "loss rose"
    suggestion: str = "lower the LR"
    evidence: dict = field(default_factory=dict)


def test_each_expectation_takes_one_finding():
    two = [F("TS101", Severity.WARNING, rank=0), F("TS101", Severity.WARNING, rank=1)]
    one = {"expect": [{"detector": "TS101", "severity": "warning"}]}
    assert len(check_case(one, two)) == 1  # the second warning is unexpected
    both = {"expect": one["expect"] * 2}
    assert check_case(both, two) == []
    assert check_case({**one, "allow": ["TS101"]}, two) == []


def test_expectation_keys():
    f = F("TS301", Severity.ERROR, rank=1, step_start=401, step_end=450, evidence={"kind": "hung"})
    want = {"detector": "TS301", "rank": 1, "step": [400, 410], "step_end": 450, "kind": "hung"}
    assert check_case({"expect": [want]}, [f]) == []
    for wrong in ({"step": 400}, {"step_end": [300, 449]}, {"kind": "slow"}, {"rank": None}):
        assert check_case({"expect": [{**want, **wrong}]}, [f]) != []
    assert check_case({"expect": [{"detector": "TS301", "message": "rose"}]}, [f]) == []
    assert check_case({"expect": [{"detector": "TS301", "suggestion": "clip"}]}, [f]) != []


def test_info_counts_only_with_check_info():
    info = [F("TS301", Severity.INFO)]
    assert check_case({"expect": []}, info) == []
    assert check_case({"expect": [], "check_info": True}, info) != []
