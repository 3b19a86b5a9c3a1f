"""``tunescope analyze`` and ``tunescope explain`` through the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from detector_cases import one_rank_run, write_case

TUNESCOPE = str(Path(sys.executable).parent / "tunescope")
pytestmark = pytest.mark.slow  # ~25 processes, each ingesting and analysing


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    clean, spiky, bad = base / "clean", base / "spiky", base / "bad"
    write_case({"runs": {"healthy": one_rank_run(400, 1000)}}, clean)
    spike = {"scale": {"from": 300, "to": 300, "by": 3}}
    write_case({"runs": {"spike": one_rank_run(400, 2000, loss=spike)}}, spiky)
    ramp = {"ramp": {"from": 200, "rate": 0.006}}
    runs = {"healthy": one_rank_run(400, 3000), "diverged": one_rank_run(400, 4000, loss=ramp)}
    write_case({"runs": runs}, bad)
    return {"clean": clean, "spiky": spiky, "bad": bad, "base": base}


def ts(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [TUNESCOPE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def test_clean_run_exits_0(roots):
    r = ts("analyze", str(roots["clean"]))
    assert r.returncode == 0, r.stderr
    assert "healthy: completed, step 400/400, 400 steps logged, no findings" in r.stdout
    assert r.stdout.strip().endswith("1 run analysed, 0 findings")


def test_divergence_exits_1_and_findings_are_stored(roots):
    r = ts("analyze", str(roots["bad"]))
    assert r.returncode == 1, r.stderr
    assert "ERROR   TS102 divergence" in r.stdout and "tunescope explain TS102" in r.stdout
    q = ts("query", str(roots["bad"]), "SELECT run_id, detector, severity FROM findings")
    assert q.returncode == 0, q.stderr
    assert "diverged,TS102,error" in q.stdout
    assert "healthy" not in q.stdout


def test_exit_zero_and_fail_on(roots):
    assert ts("analyze", str(roots["bad"]), "--exit-zero").returncode == 0
    assert ts("analyze", str(roots["bad"]), "--fail-on", "never").returncode == 0
    # a recovered spike is a warning: fails only with --fail-on warning
    assert ts("analyze", str(roots["spiky"])).returncode == 0
    r = ts("analyze", str(roots["spiky"]), "--fail-on", "warning")
    assert r.returncode == 1 and "WARNING TS101 loss-spike" in r.stdout


def test_select_ignore(roots):
    assert ts("analyze", str(roots["bad"]), "--ignore", "TS102").returncode == 0
    assert ts("analyze", str(roots["bad"]), "--select", "TS0,TS101").returncode == 0
    # repeated, as watch takes them: every value counts
    assert ts("analyze", str(roots["bad"]), "--select", "TS0", "--select", "TS101").returncode == 0
    assert ts("analyze", str(roots["bad"]), "--select", "TS101", "--select", "ts1").returncode == 1
    r = ts("analyze", str(roots["bad"]), "--select", "TS999")
    assert r.returncode == 2 and "TS999" in r.stderr and "TS101" in r.stderr
    assert "Traceback" not in r.stderr


def test_json_to_output_file(roots, tmp_path):
    out = tmp_path / "report.json"
    r = ts("analyze", str(roots["bad"]), "--format", "json", "--output", str(out))
    assert r.returncode == 1 and r.stdout == ""
    doc = json.loads(out.read_text())
    assert [f["detector"] for f in doc["findings"]] == ["TS102"]
    f = doc["findings"][0]
    assert f["run"] == "diverged" and f["rank"] is None and f["severity"] == "error"
    assert 200 <= f["step_start"] <= 300 and f["evidence"]["detected_at"] <= 300
    assert {r["run"] for r in doc["runs"]} == {"healthy", "diverged"}


def test_github_and_junit(roots):
    r = ts("analyze", str(roots["bad"]), "--format", "github")
    assert r.returncode == 1 and r.stdout.startswith("::error title=TS102 divergence in diverged")
    r = ts("analyze", str(roots["bad"]), "--format", "junit")
    assert r.returncode == 1 and '<testsuite name="diverged" tests="1" failures="1"' in r.stdout


def test_config_found_by_walking_up(roots, tmp_path):
    (roots["base"] / "tunescope.toml").write_text('fail-on = "warning"\n')
    try:
        assert ts("analyze", str(roots["spiky"])).returncode == 1
        assert ts("analyze", str(roots["spiky"]), "--fail-on", "error").returncode == 0
    finally:
        (roots["base"] / "tunescope.toml").unlink()
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text("[tool.tunescope.TS101]\nz = 50.0\nz-consecutive = 40.0\n")
    r = ts("analyze", str(roots["spiky"]), "--fail-on", "warning", "--config", str(cfg))
    assert r.returncode == 0, r.stdout


def test_config_errors_exit_2(roots, tmp_path):
    cfg = tmp_path / "tunescope.toml"
    cfg.write_text("[TS101]\nzz = 3\n")
    r = ts("analyze", str(roots["clean"]), "--config", str(cfg))
    assert r.returncode == 2 and str(cfg) in r.stderr and "TS101.zz" in r.stderr
    cfg.write_text('[TS101]\nz = "high"\n')
    r = ts("analyze", str(roots["clean"]), "--config", str(cfg))
    assert r.returncode == 2 and "TS101.z" in r.stderr and "expected a number" in r.stderr
    r = ts("analyze", str(tmp_path / "missing"))
    assert r.returncode == 2 and "missing: no such directory" in r.stderr  # as ingest says
    (tmp_path / "file").write_text("x")
    r = ts("analyze", str(tmp_path / "file"))
    assert r.returncode == 2 and "file: not a directory" in r.stderr


def test_explain():
    r = ts("explain", "ts101")
    assert r.returncode == 0
    assert r.stdout.startswith("TS101 loss spike")
    for part in ("What it flags:", "Why it matters:", "Example:", "Suggestion:", "Options"):
        assert part in r.stdout
    assert "z-consecutive = 4.0" in r.stdout
    r = ts("explain", "TS999")
    assert r.returncode == 2 and "TS001" in r.stderr and "TS106" in r.stderr
    r = ts("explain")
    assert r.returncode == 0 and len(r.stdout.splitlines()) >= 8
    # which findings can trigger which guard actions: a line under the detector
    lines = r.stdout.splitlines()

    def guard_of(det_id: str) -> str | None:
        i = next(k for k, ln in enumerate(lines) if ln.startswith(det_id + " "))
        for ln in lines[i + 1 :]:
            if ln.startswith("TS"):
                return None
            if ln.strip().startswith("guard:"):
                return ln.strip()
        return None

    assert guard_of("TS102") == "guard: stop, rewind"
    assert guard_of("TS001") == "guard: skip, stop" and guard_of("TS401") == "guard: checkpoint"
    assert guard_of("TS301") == "guard: checkpoint"  # a hung rank, by the watchdog
    assert guard_of("TS101") is None
    r = ts("explain", "TS401")
    assert "Guard actions (tunescope train --guard, TunescopeCallback(guard=...)): checkpoint" in (
        r.stdout
    )


def test_analysis_side_imports_stay_light():
    code = (
        "import sys, tunescope.cli, tunescope.detectors.engine, tunescope.detectors.registry, "
        "tunescope.config, tunescope.report.formats; "
        "print(sorted(m for m in ('torch', 'textual', 'transformers', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
