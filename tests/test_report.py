"""Each report emitter against a golden file, all on one shared findings fixture.

Regenerate the golden files after an intended change with
``TUNESCOPE_UPDATE_GOLDEN=1 python -m pytest tests/test_report.py`` and
review the diff.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tunescope.detectors.report import EMITTERS, render
from tunescope.findings import Finding, Severity

GOLDEN = Path(__file__).parent / "golden"
SUFFIX = {"text": "txt", "json": "json", "github": "github.txt", "junit": "xml"}


def shared_findings() -> tuple[list[Finding], list[dict]]:
    findings = [
        Finding(
            run="qwen-lora-r8",
            detector="TS102",
            name="divergence",
            severity=Severity.ERROR,
            step_start=1840,
            step_end=2400,
            message="loss rose 31% over steps 1800-2050 after warmup (tau=0.52, p=3e-12).",
            suggestion="Rewind to a checkpoint about 100 steps before the onset, lower the "
            "learning rate 2-10x and clip gradients at 1.0.",
            rank=None,
            evidence={"rule": "trend", "tau": 0.52, "p": 3e-12, "last_loss": float("nan")},
        ),
        Finding(
            run="qwen-lora-r8",
            detector="TS101",
            name="loss-spike",
            severity=Severity.WARNING,
            step_start=912,
            step_end=913,
            message="loss rose to 3.1x its running median (6.2 vs 2.0, z=14) at step 912; "
            "back within 5% by step 915. Samples in that batch: 4411, 9023.",
            suggestion="Inspect or skip the batch at that step; clip gradients at 1.0.",
            rank=1,
            evidence={"ratio": 3.1, "sample_ids": [4411, 9023]},
        ),
        Finding(
            run="llama-full",
            detector="TS001",
            name="non-finite",
            severity=Severity.INFO,
            step_start=None,
            step_end=None,
            message='50% of rows: <grad_norm> & "loss", a: b, c\nsecond line',
            suggestion="Nothing to do (a 100% <harmless> note).",
            rank=None,
            evidence={},
        ),
    ]
    runs = [
        {
            "run": "clean-run",
            "name": "clean-run",
            "format": "native",
            "status": "completed",
            "world_size": 1,
            "steps_logged": 300,
            "last_step": 300,
            "total_steps": 300,
            "last_loss": 1.21,
            "findings": {"info": 0, "warning": 0, "error": 0},
            "worst": None,
        },
        {
            "run": "llama-full",
            "name": "llama-full",
            "format": "native",
            "status": "running",
            "world_size": 1,
            "steps_logged": 120,
            "last_step": 120,
            "total_steps": None,
            "last_loss": 2.5,
            "findings": {"info": 1, "warning": 0, "error": 0},
            "worst": "info",
        },
        {
            "run": "qwen-lora-r8",
            "name": "qwen-lora-r8",
            "format": "native",
            "status": "failed",
            "world_size": 2,
            "steps_logged": 2400,
            "last_step": 2400,
            "total_steps": 3000,
            "last_loss": 5.9,
            "findings": {"info": 0, "warning": 1, "error": 1},
            "worst": "error",
        },
    ]
    return findings, runs


@pytest.mark.parametrize("fmt", sorted(EMITTERS))
def test_emitter_matches_golden(fmt):
    findings, runs = shared_findings()
    out = render(fmt, findings, runs)
    path = GOLDEN / f"report.{SUFFIX[fmt]}"
    if os.environ.get("TUNESCOPE_UPDATE_GOLDEN"):
        path.write_text(out, encoding="utf-8")
    assert out == path.read_text(encoding="utf-8")


def test_json_contract():
    findings, runs = shared_findings()
    doc = json.loads(render("json", findings, runs))
    assert doc["version"] == 1
    keys = [
        "run",
        "rank",
        "detector",
        "name",
        "severity",
        "step_start",
        "step_end",
        "message",
        "suggestion",
        "evidence",
        "explain",
    ]
    assert all(list(f) == keys for f in doc["findings"])
    assert doc["findings"][1]["explain"] == "tunescope explain TS101"
    assert doc["findings"][0]["rank"] is None and doc["findings"][1]["rank"] == 1
    assert doc["findings"][0]["evidence"]["last_loss"] == "NaN"  # strict JSON, no NaN token
    assert [r["run"] for r in doc["runs"]] == ["clean-run", "llama-full", "qwen-lora-r8"]


def test_junit_is_valid_xml_with_failures():
    findings, runs = shared_findings()
    root = ET.fromstring(render("junit", findings, runs))
    assert root.get("failures") == "2"
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert suites["qwen-lora-r8"].get("failures") == "2"
    assert suites["clean-run"].find("testcase").get("name") == "no findings"
    assert suites["llama-full"].get("failures") == "0"  # info is not a failure


def test_github_escapes_one_line_per_finding():
    findings, runs = shared_findings()
    lines = render("github", findings, runs).splitlines()
    assert lines[0].startswith("::error title=TS102 divergence in qwen-lora-r8 (steps 1840-2400%2C")
    assert lines[1].startswith("::warning title=TS101")
    assert lines[2].startswith("::notice title=TS001 non-finite in llama-full")
    assert "%0Asecond line" in lines[2] and "50%25 of rows" in lines[2]
    assert sum(line.startswith("::") for line in lines) == len(lines) == 4


def test_text_has_run_summaries_and_fixes():
    findings, runs = shared_findings()
    out = render("text", findings, runs)
    assert (
        "qwen-lora-r8: failed, step 2400/3000, 2,400 steps logged, 2 findings (1 error, 1 warning)"
        in out
    )
    assert "clean-run: completed" in out and "no findings" in out
    assert out.count("fix: ") == 3 and "tunescope explain TS101" in out
