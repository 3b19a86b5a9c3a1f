"""The frames a detector reads: the store's ``Context`` (the steps frame
sorted without an SQL sort, numpy columns converted once, per-rank row
slices) and the live guard's ``LiveFrames``, on which the same detectors
judge the same records the same way."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest
from detector_cases import CASES_DIR, load_case, write_case

from tunescope.detectors import divergence, memory_growth
from tunescope.detectors.base import Context, NoStore, sort_steps
from tunescope.detectors.scans.rankwise import rank_slices
from tunescope.ingest.store.database import Store
from tunescope.schema import METRIC_NAMES
from tunescope.train.live_frames import LiveFrames


def _expected(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort("run_id", "rank", "step", nulls_last=True, maintain_order=True)


def test_sort_steps_matches_a_stable_sort_on_random_frames():
    rng = np.random.default_rng(7)
    for _ in range(300):
        n = int(rng.integers(2, 40))
        df = pl.DataFrame(
            {
                "run_id": rng.choice(["a", "b", "run-10", "run-9"], n).tolist(),
                "rank": rng.integers(0, 3, n),
                "step": rng.integers(0, 6, n),
                "i": np.arange(n),
            }
        )
        if rng.random() < 0.5:
            df = _expected(df)  # already in order: returned as is
            assert sort_steps(df) is df
        assert sort_steps(df).equals(_expected(df))


def test_sort_steps_catches_a_rank_going_down_inside_a_run():
    # run_id sorted and every (rank, step) drop at a run change but one
    df = pl.DataFrame(
        {
            "run_id": ["a", "a", "a", "b", "b"],
            "rank": [0, 1, 0, 0, 0],
            "step": [5, 1, 6, 1, 2],
            "i": [0, 1, 2, 3, 4],
        }
    )
    assert sort_steps(df)["i"].to_list() == [0, 2, 1, 3, 4]


def test_sort_steps_puts_nulls_last_and_keeps_duplicate_order():
    df = pl.DataFrame(
        {
            "run_id": ["b", None, "a", "a", "a"],
            "rank": [0, 0, 0, 0, None],
            "step": [1, 1, 2, 2, 1],
            "i": [0, 1, 2, 3, 4],
        }
    )
    # duplicates (a, 0, 2) keep their stored order: "keep the last write" holds
    assert sort_steps(df)["i"].to_list() == [2, 3, 4, 0, 1]


class _Store:
    def __init__(self, con):
        self.con = con

    def cursor(self):
        return self.con.cursor()


@pytest.fixture
def ctx():
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE steps AS SELECT * FROM (VALUES "
        "('r2', 1, 2, 2.0, 0.5), ('r1', 0, 2, 2.0, NULL), ('r1', 0, 1, 1.0, 0.9), "
        "('r2', 0, 1, 1.0, 0.7)) t(run_id, rank, step, ts, loss)"
    )
    return Context(_Store(con))  # type: ignore[arg-type]


def test_context_steps_are_sorted_and_columns_shared(ctx):
    df = ctx.steps()
    assert list(df.select("run_id", "rank", "step").iter_rows()) == [
        ("r1", 0, 1),
        ("r1", 0, 2),
        ("r2", 0, 1),
        ("r2", 1, 2),
    ]
    loss = ctx.column("loss")
    assert np.isnan(loss[1]) and loss[0] == 0.9 and loss.dtype == float
    assert ctx.column("loss") is loss  # converted once
    with pytest.raises(ValueError):
        loss[0] = 1.0  # shared between detectors: read-only
    assert ctx.column("step", as_float=False).dtype.kind == "i"
    assert ctx.logged("loss").tolist() == [True, False, True, True]
    assert np.isnan(ctx.column("grad_norm")).all()  # a column the frame lacks
    assert not ctx.logged("grad_norm").any()


def test_rank_slices_are_contiguous_blocks(ctx):
    assert rank_slices(ctx.steps()) == [("r1", 0, 0, 2), ("r2", 0, 2, 3), ("r2", 1, 3, 4)]
    assert rank_slices(ctx.steps().head(0)) == []


@pytest.mark.parametrize(
    ("case", "detector"),
    [("divergence_post_warmup.yaml", divergence), ("systems/ts401_leak_oom.yaml", memory_growth)],
)
def test_live_frames_judge_as_the_store_does(case, detector, tmp_path):
    """A run still going (no run_end), rank 0: TS102 and TS401 find the same
    over the store's frames and over the records the guard keeps in memory."""
    spec = load_case(CASES_DIR / case)
    name, run = next(iter(spec["runs"].items()))
    items = next(iter(run["ranks"].values()))
    spec["runs"] = {name: {"ranks": {0: [i for i in items if i.get("kind") != "run_end"]}}}
    write_case(spec, tmp_path / "runs")
    store = Store.open(tmp_path / "runs", tmp_path / "cache")
    try:
        ctx = Context(store)
        expected = detector.run(ctx, detector.Options())
        steps = ctx.steps()
        cols = {c: steps.get_column(c).to_list() for c in ("step", "ts", *METRIC_NAMES)}
        live = LiveFrames(name, 0, cols, ctx.run_start(name))
        got = detector.run(live, detector.Options())
    finally:
        store.close()
    assert any(f.severity.value == "error" for f in expected)
    seen = [(f.detector, f.severity, f.rank, f.step_start, f.step_end, f.message) for f in got]
    assert seen == [
        (f.detector, f.severity, f.rank, f.step_start, f.step_end, f.message) for f in expected
    ]


def test_live_frames_have_no_store():
    live = LiveFrames("r", 0, {"step": [1, 2], "ts": [0.0, 1.0], "loss": [2.0, 1.9]}, {})
    assert live.runs().row(0, named=True)["last_step"] == 2
    assert live.column("loss").tolist() == [2.0, 1.9]
    assert np.isnan(live.column("grad_norm")).all()
    assert live.events(["run_start"]).height == 1 and live.events(["eval"]).height == 0
    with pytest.raises(NoStore):
        live.sql("SELECT 1")
