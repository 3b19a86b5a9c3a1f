"""Across-run detectors (TS501) at scale and under ``--select``/``--ignore``:
TS501's findings on the fixture sweeps stay what they were when every pair of
siblings was compared, and a detector left out is not run at all (a fresh
store holds none of its findings), while the store keeps what an earlier
analysis found."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from detector_cases import write_case

from tunescope.cli import main
from tunescope.detectors.engine import analyze
from tunescope.ingest.store.database import Store

REPO = Path(__file__).parents[2]
GOLDEN = Path(__file__).parent / "golden" / "ts501_fixtures.json"


@pytest.mark.parametrize("root", ["fixtures/sweeps", "fixtures/runs"])
def test_ts501_findings_on_the_fixtures_are_unchanged(root, tmp_path):
    """The golden file holds TS501's findings as the pairwise search made them."""
    store = Store.open(REPO / root, tmp_path / "cache")
    try:
        found = [f.to_dict() for f in analyze(store, select="TS501")]
    finally:
        store.close()
    want = json.loads(GOLDEN.read_text())[root]
    assert json.loads(json.dumps(found)) == want
    if root == "fixtures/sweeps":
        assert len(want) == 9  # the grid's six, and the three seeds named with the grid's r8


def _sweep(root: Path) -> None:
    """72 runs of one group: lr x rank (alpha 2r) x targets x 2 seeds, where
    a low lr, a low rank and fewer targets end higher."""
    runs: dict[str, Any] = {}
    for i, lr in enumerate((1e-5, 1e-4, 1e-3, 1e-2)):
        for j, r in enumerate((2, 8, 32)):
            for k, target in enumerate(("q_proj,v_proj", "all-linear", "v_proj")):
                for seed in (0, 1):
                    final = 1.2 + 0.2 * abs(i - 2) + 0.15 * (2 - j) + 0.1 * k
                    start = {"kind": "run_start", "world_size": 1, "model": "tiny",
                             "finetuning_type": "lora", "lora_r": r, "lora_alpha": 2 * r,
                             "total_steps": 120,
                             "config": {"dataset": "d.jsonl", "learning_rate": lr,
                                        "lora_target": target, "seed": seed}}  # fmt: skip
                    steps = {"generate": "steps", "from": 1, "to": 120, "seed": len(runs),
                             "loss": {"start": 3.0, "end": final, "tau": 25, "log_noise": 0.01},
                             "lr": {"warmup": 5, "peak": lr}}  # fmt: skip
                    end = {"kind": "run_end", "status": "completed"}
                    runs[f"lr{i}-r{r}-t{k}-s{seed}"] = {"ranks": {0: [start, steps, end]}}
    write_case({"runs": runs}, root, fast=True)


def _stored(root: Path, cache: Path, detector: str) -> list[tuple[Any, ...]]:
    """What the store holds from ``detector`` (the ``findings`` view)."""
    store = Store.open(root, cache)
    try:
        return (
            store.cursor()
            .execute(
                "SELECT run_id, step_start, message FROM findings WHERE detector = ? ORDER BY ALL",
                [detector],
            )
            .fetchall()
        )
    finally:
        store.close()


def _analyze(root: Path, cache: Path, *args: str, capsys) -> dict[str, Any]:
    argv = ["analyze", str(root), "--cache-dir", str(cache), "--format", "json", *args]
    assert main(argv) in (0, 1)
    return json.loads(capsys.readouterr().out)


def test_an_ignored_across_run_detector_is_not_run(tmp_path, capsys):
    root, cache = tmp_path / "sweep", tmp_path / "cache"
    _sweep(root)
    # left out from a fresh store: nothing of TS501 in the report, and none
    # stored either, since it never ran (a filter would have stored them)
    out = _analyze(root, cache, "--ignore", "TS501", capsys=capsys)
    assert len(out["runs"]) == 72
    assert not [f for f in out["findings"] if f["detector"] == "TS501"]
    assert _stored(root, cache, "TS501") == []
    # run: it names many runs of this sweep, and the store keeps them
    out = _analyze(root, cache, capsys=capsys)
    named = [f for f in out["findings"] if f["detector"] == "TS501"]
    assert len(named) > 20
    before = _stored(root, cache, "TS501")
    assert len(before) == len(named)
    # left out again: the report has none, the store keeps what it found
    for args in (["--ignore", "TS501"], ["--select", "TS1,TS2"], ["--ignore", "TS5"]):
        out = _analyze(root, cache, *args, capsys=capsys)
        assert not [f for f in out["findings"] if f["detector"] == "TS501"]
        assert _stored(root, cache, "TS501") == before


def test_ts502_runs_when_selected_without_ts501(tmp_path, capsys):
    """The fixture sweep, on which both fire: --select TS502 runs TS502 only."""
    root, cache = tmp_path / "sweeps", tmp_path / "cache"
    shutil.copytree(REPO / "fixtures" / "sweeps", root, ignore=shutil.ignore_patterns(".*"))
    out = _analyze(root, cache, "--select", "TS502", capsys=capsys)
    assert {f["detector"] for f in out["findings"]} == {"TS502"}
    assert _stored(root, cache, "TS502") and _stored(root, cache, "TS501") == []
    out = _analyze(root, cache, "--select", "TS501", capsys=capsys)
    assert {f["detector"] for f in out["findings"]} == {"TS501"}
    assert len(_stored(root, cache, "TS501")) == 9
