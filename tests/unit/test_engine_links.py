"""The engine's link pass: findings of different detectors that are one incident."""

from __future__ import annotations

from tunescope.detectors.engine import link_incidents
from tunescope.findings import Finding, Severity


def _f(detector: str, sev: Severity, start: int, end: int, rank: int | None = 0) -> Finding:
    return Finding(
        run="r",
        detector=detector,
        name=detector.lower(),
        severity=sev,
        step_start=start,
        step_end=end,
        message=f"{detector} message.",
        suggestion="fix it",
        rank=rank,
        evidence={"ratio": 0.69},
    )


def test_a_throughput_drop_that_begins_with_a_divergence_says_so_and_both_stay() -> None:
    div = _f("TS102", Severity.ERROR, 121, 300, rank=None)
    drop = _f("TS302", Severity.WARNING, 123, 300)
    out = link_incidents([div, drop])
    assert [f.detector for f in out] == ["TS102", "TS302"]  # the divergence is never dropped
    linked = out[1]
    assert "began with the divergence at step 121 (TS102)" in linked.message
    assert linked.evidence["linked"][0]["detector"] == "TS102"
    assert out[0] == div and drop.message == "TS302 message."  # inputs unchanged


def test_a_divergence_of_equal_severity_is_kept_too() -> None:
    div = _f("TS102", Severity.WARNING, 121, 300)
    out = link_incidents([div, _f("TS302", Severity.WARNING, 125, 300)])
    assert [f.detector for f in out] == ["TS102", "TS302"]


def test_a_throughput_drop_long_after_a_divergence_is_not_linked() -> None:
    out = link_incidents(
        [_f("TS102", Severity.ERROR, 121, 300), _f("TS302", Severity.WARNING, 200, 300)]
    )
    assert out[1].message == "TS302 message." and "linked" not in out[1].evidence


def test_a_grad_norm_spike_just_before_a_loss_spike_is_still_one_incident() -> None:
    gn = _f("TS105", Severity.WARNING, 98, 98)
    gn.evidence.update(grad_norm=42.0, ratio_to_median=30.0)
    out = link_incidents([gn, _f("TS101", Severity.WARNING, 100, 100)])
    assert [f.detector for f in out] == ["TS101"]
    assert "The grad norm spiked first (42 at step 98, 30x its median)." in out[0].message
