"""Findings kept by a content key (``detectors/memo.py``): ``analyze`` over an
unchanged corpus runs no per-run detector again, a grown run is the only one
analysed again, a changed option recomputes everything, and every result
equals a cold analysis of the same logs (the ``findings`` view included)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from detector_cases import one_rank_run, write_case

from tunescope.cli import main
from tunescope.detectors import loss_spike, sibling_gap

REPO = Path(__file__).parents[2]
MEMO = "findings-memo.parquet"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """The trainer-made runs, and a run that logs no memory or step times
    (whose summary names what it cannot show)."""
    root = tmp_path / "runs"
    shutil.copytree(REPO / "fixtures" / "runs", root)
    write_case({"runs": {"loss-only": one_rank_run(300, 1)}}, root, fast=True)
    return root


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Which runs TS101 (per run) and TS501 (across runs) were run over: a
    spy that calls the real detector."""
    seen: list[tuple[str, Any]] = []
    for det in (loss_spike, sibling_gap):
        real = det.run

        def spy(ctx: Any, opts: Any, real: Any = real, det: Any = det) -> Any:
            seen.append((det.ID, None if ctx.run_ids is None else sorted(ctx.run_ids)))
            return real(ctx, opts)

        monkeypatch.setattr(det, "run", spy)
    return seen


def analyze(root: Path, out: Path, *extra: str) -> dict[str, Any]:
    """The JSON report: the findings and the runs' summaries (their limits too)."""
    argv = ["analyze", str(root), "--format", "json", "-o", str(out), "--exit-zero", *extra]
    assert main(argv) == 0
    return json.loads(out.read_text())


def stored(root: Path, out: Path, cache: Path | None = None) -> list[Any]:
    sql = "SELECT * FROM findings ORDER BY ALL"
    argv = ["query", str(root), sql, "--format", "json", "-o", str(out)]
    assert main(argv + (["--cache-dir", str(cache)] if cache else [])) == 0
    return json.loads(out.read_text())


def cold(root: Path, tmp: Path, *extra: str) -> tuple[dict[str, Any], list[Any]]:
    """The findings of an analysis in a new cache (no kept findings), and the
    findings view it stored."""
    cache = tmp / f"cold-{len(list(tmp.glob('cold-*')))}"
    found = analyze(root, tmp / "cold.json", "--cache-dir", str(cache), *extra)
    return found, stored(root, tmp / "cold-view.json", cache)


def grow(run: Path) -> None:
    """Twenty more steps on rank 0, the last with a NaN loss (a new finding)."""
    path = run / "events" / "rank-0.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    last = next(x for x in reversed(lines) if x["kind"] == "step")
    with open(path, "a") as f:
        for i in range(1, 21):
            step = {**last, "step": last["step"] + i, "ts": last["ts"] + i}
            if i == 20:
                step["loss"] = float("nan")
            f.write(json.dumps(step) + "\n")


def test_unchanged_runs_are_not_analysed_again(corpus, tmp_path, calls):
    first = analyze(corpus, tmp_path / "1.json")
    assert first["findings"] and (corpus / ".tunescope" / MEMO).is_file()
    assert any(r["limits"] for r in first["runs"])  # kept too: the same on the second pass
    assert {c[0] for c in calls} == {"TS101", "TS501"}
    calls.clear()
    again = analyze(corpus, tmp_path / "2.json")
    assert calls == []  # nothing changed: no detector ran
    assert again == first
    want, view = cold(corpus, tmp_path)
    assert again == want
    assert stored(corpus, tmp_path / "view.json") == view


def test_a_grown_run_is_the_only_one_analysed_again(corpus, tmp_path, calls):
    analyze(corpus, tmp_path / "1.json")
    calls.clear()
    grow(corpus / "healthy-lora-s0")
    after = analyze(corpus, tmp_path / "2.json")
    # per run: only the grown run; across runs: every run, since one changed
    assert calls == [("TS501", None), ("TS101", ["healthy-lora-s0"])]
    assert any(
        f["run"] == "healthy-lora-s0" and f["detector"] == "TS001" for f in after["findings"]
    )
    want, view = cold(corpus, tmp_path)
    assert after == want
    assert stored(corpus, tmp_path / "view.json") == view


def test_a_changed_option_recomputes_everything(corpus, tmp_path, calls):
    first = analyze(corpus, tmp_path / "1.json")
    calls.clear()
    (corpus / "tunescope.toml").write_text("[TS101]\nz = 1000.0\nz_consecutive = 1000.0\n")
    after = analyze(corpus, tmp_path / "2.json")
    assert ("TS101", None) in calls  # every run, in one batch
    assert ("TS501", None) not in calls  # its own options did not change
    assert after != first  # the higher thresholds find fewer spikes
    want, view = cold(corpus, tmp_path)
    assert after == want
    assert stored(corpus, tmp_path / "view.json") == view


def test_select_is_part_of_the_key(corpus, tmp_path, calls):
    """``--select`` analyses with other detectors (the kept findings of the
    full set are not reused for it, nor it for them), with equal results."""
    full = analyze(corpus, tmp_path / "1.json")
    picked = analyze(corpus, tmp_path / "2.json", "--select", "TS1")
    assert picked == cold(corpus, tmp_path, "--select", "TS1")[0]
    assert analyze(corpus, tmp_path / "3.json") == full


@pytest.mark.parametrize("damage", [b"", b"PAR1 not a parquet file", "wrong-schema", "link"])
def test_a_damaged_memo_is_analysed_again(corpus, tmp_path, calls, damage):
    first = analyze(corpus, tmp_path / "1.json")
    memo = corpus / ".tunescope" / MEMO
    memo.unlink()
    if damage == "wrong-schema":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"key": [1], "scope": ["x"], "finding": ["{}"]}), memo)
    elif damage == "link":
        elsewhere = tmp_path / "elsewhere.parquet"
        shutil.copy(REPO / "fixtures" / "runs" / "fault-nan" / "events" / "rank-0-000001.parquet",
                    elsewhere)  # fmt: skip
        memo.symlink_to(elsewhere)
    else:
        memo.write_bytes(damage)
    calls.clear()
    assert analyze(corpus, tmp_path / "2.json") == first
    assert ("TS101", None) in calls  # analysed again, not read from the damaged file
    assert memo.is_file() and not memo.is_symlink()


def test_findings_saved_by_another_analysis_are_saved_again(corpus, tmp_path, calls):
    """Findings stored without a key (another surface's analysis) are
    replaced by the next ``analyze``, though no run is analysed again."""
    from tunescope.ingest.store.database import Store

    first = analyze(corpus, tmp_path / "1.json")
    view = stored(corpus, tmp_path / "view.json")
    store = Store(corpus)
    try:
        store.save_findings([], store.run_ids())  # e.g. an analysis of other detectors
    finally:
        store.close()
    assert stored(corpus, tmp_path / "empty.json") == []
    calls.clear()
    assert analyze(corpus, tmp_path / "2.json") == first
    assert calls == []
    assert stored(corpus, tmp_path / "view2.json") == view
