"""Behaviour tests of the TUI with Textual's Pilot, over runs written with EventWriter.

The runs are written into ``tmp_path`` (the demo fixtures are not used), with
fixed timestamps, and findings are stored with ``store.save_findings``.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, OptionList, Select, Static

from tunescope.findings import Finding, Severity
from tunescope.ingest.store.database import Store
from tunescope.report.curves import RUN_PLOTS, spec_source
from tunescope.train.events import EventWriter
from tunescope.tui.app import TunescopeApp
from tunescope.tui.compare_screen import CompareScreen, diff_table
from tunescope.tui.error_modal import ErrorModal
from tunescope.tui.plot import Plot
from tunescope.tui.queries import bucket_series, plot_series, run_plots
from tunescope.tui.rank_grid import RankGrid
from tunescope.tui.run_screen import RunScreen
from tunescope.tui.runs_screen import RunsScreen
from tunescope.tui.sql_screen import SqlScreen

pytestmark = pytest.mark.anyio

T0 = 1_760_000_000.0
# The live run's clock runs far ahead, so that it reads as "running" however long
# the suite takes (a run without run_end is running while its last event is recent).
T_LIVE = 4_000_000_000.0
STEPS = 200
DIVERGE_AT = 120
SPIKE_STEP = 77
SPIKE_VALUE = 9.5

TS102 = {
    "run_id": "diverged-lr",
    "rank": None,
    "detector": "TS102",
    "name": "divergence",
    "severity": "error",
    "step_start": DIVERGE_AT,
    "step_end": STEPS,
    "message": f"loss rose 41x above its running median from step {DIVERGE_AT} and became NaN "
    "at step 198, after warmup ended at step 20",
    "suggestion": "lower the learning rate (3e-4 -> 1e-4) or clip gradients at 1.0, then resume "
    f"from the checkpoint before step {DIVERGE_AT}",
    "evidence": json.dumps({"ratio": 41.2, "first_nan_step": 198}),
}
TS101 = {
    "run_id": "diverged-lr",
    "rank": 0,
    "detector": "TS101",
    "name": "loss-spike",
    "severity": "warning",
    "step_start": 60,
    "step_end": 62,
    "message": "loss jumped 3.1x its running median at step 60",
    "suggestion": "inspect the batch at step 60 (sample_ids in the steps view)",
    "evidence": "{}",
}
TS104 = {
    "run_id": "straggler",
    "rank": 2,
    "detector": "TS104",
    "name": "rank-straggler",
    "severity": "warning",
    "step_start": 1,
    "step_end": STEPS,
    "message": "rank 2 computes 1.8x longer than the median rank",
    "suggestion": "check rank 2's GPU clocks, thermal throttling or data loader workers",
    "evidence": "{}",
}


def _loss(step: int) -> float:
    return 2.4 * math.exp(-step / 60) + 0.6 + 0.03 * math.sin(step * 0.7)


def write_run(
    root: Path,
    name: str,
    *,
    ranks: int = 1,
    steps: int = STEPS,
    diverge: bool = False,
    slow_rank: int | None = None,
    spike: bool = False,
    end: str | None = "completed",
    lr: float = 3e-4,
    t0: float = T0,
) -> None:
    for rank in range(ranks):
        with EventWriter(root / name, rank=rank) as w:
            if rank == 0:
                w.run_start(
                    ts=t0,
                    model="tiny-llama-test",
                    finetuning_type="lora",
                    lora_r=8,
                    world_size=ranks,
                    total_steps=steps if end else 400,
                    warmup_steps=20,
                    host="test-host",
                    config={"lr": lr, "batch_size": 8, "lora_r": 8, "seed": 1},
                )
            for s in range(1, steps + 1):
                write_step(
                    w, s, rank, diverge=diverge, slow_rank=slow_rank, spike=spike, lr=lr, t0=t0
                )
                if rank == 0 and s % 50 == 0:  # eval metrics land in the metrics view
                    w.eval(step=s, ts=t0 + s, eval_loss=_loss(s) + 0.1)
            if end:
                w.run_end(end, ts=t0 + steps + 1, error="loss is NaN" if end == "failed" else None)


def write_step(
    w: EventWriter,
    s: int,
    rank: int,
    *,
    diverge: bool = False,
    slow_rank: int | None = None,
    spike: bool = False,
    lr: float = 3e-4,
    t0: float = T0,
) -> None:
    loss = _loss(s) + 0.01 * rank
    if diverge and s >= DIVERGE_AT:
        loss *= math.exp((s - DIVERGE_AT) / 20)
    if diverge and s >= STEPS - 2:
        loss = float("nan")
    if spike and s == SPIKE_STEP:
        loss = SPIKE_VALUE
    compute = 0.30 * (1.8 if rank == slow_rank else 1.0)
    w.step(
        step=s,
        ts=t0 + s,
        loss=loss,
        lr=lr * min(1.0, s / 20),
        grad_norm=1.1,
        grad_norm_adapter=1.0,
        grad_norm_backbone=0.05,
        mem_allocated_mb=4000.0 + 2.0 * s + 100 * rank,
        compute_time_s=compute,
        step_time_s=0.6,
        tokens=4096,
    )


def build_runs(root: Path) -> Store:
    """Four runs: diverged (2 ranks, NaN at the end), healthy (with one spike),
    straggler (4 ranks, rank 2 slow) and live (running: no run_end)."""
    root.mkdir(parents=True, exist_ok=True)
    write_run(root, "diverged-lr", ranks=2, diverge=True, end="failed")
    write_run(root, "healthy", spike=True, lr=1e-4)
    write_run(root, "straggler", ranks=4, slow_rank=2)
    write_run(root, "live", steps=50, end=None, t0=T_LIVE)
    store = Store.open(root)
    store.save_findings([TS102, TS101], ["diverged-lr"])
    store.save_findings([TS104], ["straggler"])
    return store


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four runs, written and ingested once per module (tests only read them)."""
    root = tmp_path_factory.mktemp("tui") / "runs"
    build_runs(root).close()
    return root


@pytest.fixture
def runs(runs_root: Path) -> tuple[Path, Store]:
    """A fresh in-memory store over the shared runs (loading is cheap; ingest is done)."""
    store = Store(runs_root)
    yield runs_root, store
    store.close()


def make_app(store: Store, **kw: Any) -> TunescopeApp:
    kw.setdefault("live", False)
    kw.setdefault("analyze", False)
    kw.setdefault("clock", lambda: 0.0)
    return TunescopeApp(store, **kw)


async def settle(pilot: Pilot, until: Any = None, timeout: float = 10.0) -> None:
    """Wait until no worker runs and every posted message is handled (and ``until()``)."""
    app = pilot.app
    deadline = time.monotonic() + timeout
    while True:
        await pilot.pause()
        busy = any(w.is_running for w in app.workers if w.group != "live")
        # A DataTable measures new rows when idle: wait for it, or a screenshot
        # taken under load shows columns still at their header widths.
        busy = busy or any(
            t._require_update_dimensions or t._updated_cells for t in app.screen.query(DataTable)
        )
        if not busy and (until is None or until()):
            await pilot.pause()
            return
        if time.monotonic() > deadline:
            raise AssertionError("the app did not settle in time")
        await asyncio.sleep(0.02)


def table_rows(app: TunescopeApp) -> list[list[str]]:
    table = app.screen.query_one("#runs-table", DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def run_names(app: TunescopeApp) -> list[str]:
    return [r[1] for r in table_rows(app)]


async def open_run(pilot: Pilot, name: str) -> RunScreen:
    app = pilot.app
    app.screen.query_one("#runs-filter", Input).value = name
    await settle(pilot, lambda: run_names(app) == [name])
    app.screen.query_one("#runs-table", DataTable).focus()
    await pilot.press("enter")
    await settle(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.extent)
    screen = app.screen
    assert isinstance(screen, RunScreen)
    await settle(pilot, lambda: all(p.loaded for p in screen.query(Plot)))
    return screen


# ---- runs screen ------------------------------------------------------------------------


async def test_runs_screen_lists_status_progress_and_findings(runs: tuple[Path, Store]) -> None:
    _, store = runs
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        rows = {r[1]: r for r in table_rows(app)}
        assert set(rows) == {"diverged-lr", "healthy", "straggler", "live"}
        assert rows["diverged-lr"][2] == "failed"
        assert rows["healthy"][2] == "completed"
        assert rows["live"][2] == "running"
        assert rows["live"][3] == "50/400"
        assert rows["straggler"][6] == "4"
        assert rows["diverged-lr"][7] == "1E 1W"
        assert rows["straggler"][7] == "1W"
        assert rows["healthy"][7] == "–"
        assert rows["diverged-lr"][4] == "NaN"  # the last loss is NaN: shown, not hidden

        await pilot.press("x")  # only runs with findings
        await settle(pilot, lambda: len(run_names(app)) == 2)
        assert sorted(run_names(app)) == ["diverged-lr", "straggler"]
        await pilot.press("x", "f")  # all runs again, then status = running
        await settle(pilot, lambda: run_names(app) == ["live"])
        await pilot.press("f")  # completed
        await settle(pilot, lambda: run_names(app) == ["healthy", "straggler"])
        await pilot.press("f")  # failed
        await settle(pilot, lambda: run_names(app) == ["diverged-lr"])
        await pilot.press("f", "f")  # interrupted, then all
        await settle(pilot, lambda: len(run_names(app)) == 4)

        await pilot.press("o", "o")  # sort by findings: errors first
        await settle(pilot, lambda: run_names(app)[0] == "diverged-lr")
        assert run_names(app)[:2] == ["diverged-lr", "straggler"]
        await pilot.press("slash", *"STRAG")  # case-insensitive name filter
        await settle(pilot, lambda: run_names(app) == ["straggler"])
        state = str(app.screen.query_one("#runs-state", Static).content)
        assert "1 of 4 runs" in state
        await pilot.press("escape")
        await settle(pilot, lambda: len(run_names(app)) == 4)


async def test_runs_table_pages_through_queries(
    runs: tuple[Path, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, store = runs
    monkeypatch.setattr(RunsScreen, "page_size", 2)
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        screen = app.screen
        assert len(screen.rows) == 2 and screen.matched == 4  # one page in the widget
        assert "2 loaded" in str(screen.query_one("#runs-state", Static).content)
        await pilot.press("down")  # near the end: the next page is fetched
        await settle(pilot, lambda: len(screen.rows) == 4)
        assert run_names(app) == ["diverged-lr", "healthy", "live", "straggler"]


async def test_click_opens_a_run(runs: tuple[Path, Store]) -> None:
    _, store = runs
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        target = run_names(app).index("healthy")
        await pilot.click("#runs-table", offset=(5, 1 + target))  # header row, then rows
        await pilot.click("#runs-table", offset=(5, 1 + target))  # a second click selects
        await settle(pilot, lambda: isinstance(app.screen, RunScreen))
        assert app.screen.run_id == "healthy"
        await pilot.press("escape")
        await settle(pilot, lambda: isinstance(app.screen, RunsScreen))
        # A click on a column header sorts by it; a second click reverses.
        table = app.screen.query_one("#runs-table", DataTable)
        x = sum(c.get_render_width(table) for c in table.ordered_columns[:4]) + 2
        await pilot.click("#runs-table", offset=(x, 0))  # the "loss" header
        await settle(pilot, lambda: app.screen.filter.sort == "loss")
        assert run_names(app)[0] in ("healthy", "straggler")  # lowest last loss first
        assert run_names(app)[-1] == "diverged-lr"  # NaN sorts last
        await pilot.click("#runs-table", offset=(x, 0))
        await settle(pilot, lambda: app.screen.filter.descending)


# ---- run screen -------------------------------------------------------------------------


async def test_divergence_finding_suggestion_and_zoom(runs: tuple[Path, Store]) -> None:
    _, store = runs
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        screen = await open_run(pilot, "diverged-lr")
        await settle(pilot, lambda: len(screen.findings) == 2)

        # Errors first: the divergence finding is highlighted, its suggestion shown.
        options = screen.query_one("#findings-list", OptionList)
        assert options.option_count == 2
        assert "TS102" in str(options.get_option_at_index(0).prompt)
        assert "lower the learning rate" in screen.detail
        assert "41x" in screen.detail

        # Whole run before zooming; markers for both findings.
        loss = screen.query_one("#plot-loss", Plot)
        assert loss.frame.x_range == (1.0, float(STEPS))
        assert {(m.start, m.end) for m in loss.markers} == {(DIVERGE_AT, STEPS), (60, 62)}
        # The NaN at the end of the run is counted, not dropped.
        assert sum(s.bad.sum() for s in loss.series) > 0

        options.focus()
        await pilot.press("enter")  # select the highlighted finding: zoom to it
        await settle(pilot, lambda: screen.zoom is not None and loss.x_range == screen.zoom)
        lo, hi = screen.zoom
        assert lo < DIVERGE_AT <= hi == STEPS
        assert lo >= DIVERGE_AT - (STEPS - DIVERGE_AT)
        for plot in screen.query(Plot):
            assert plot.x_range == screen.zoom
            for s in plot.series:
                assert s.x.min() >= lo and s.x.max() <= hi
        assert [m.selected for m in loss.markers if m.start == DIVERGE_AT] == [True]

        await pilot.press("n")  # next finding: the spike, zoomed around steps 60-62
        await settle(pilot, lambda: screen.zoom is not None and screen.zoom[1] < 100)
        assert "inspect the batch at step 60" in screen.detail
        assert screen.zoom[0] <= 60 and screen.zoom[1] >= 62

        await pilot.press("z")  # unzoom
        await settle(pilot, lambda: screen.zoom is None and loss.x_range == (1.0, float(STEPS)))

        await pilot.press("l", "m")  # log scale and smoothing on the loss
        await settle(pilot, lambda: loss.log_y and "smoothed" in loss.note)
        assert loss.frame.y_range[0] < 1.0  # log10 of the loss: the axis is in decades

        await pilot.press("3")
        config = str(screen.query_one("#run-config", Static).content.text)
        assert '"batch_size": 8' in config
        await pilot.press("escape")
        await settle(pilot, lambda: isinstance(app.screen, RunsScreen))


async def test_straggler_is_obvious_in_the_rank_view(runs: tuple[Path, Store]) -> None:
    _, store = runs
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        screen = await open_run(pilot, "straggler")
        await pilot.press("2")
        grid = screen.query_one("#rank-grid", RankGrid)
        await settle(pilot, lambda: grid.slowest is not None)
        rank, ratio = grid.slowest
        assert rank == 2 and 1.7 < ratio < 1.9
        assert "straggler: rank 2" in str(grid.content)
        # The memory plot has one series per rank.
        mem = screen.query_one("#plot-mem", Plot)
        assert [s.label for s in mem.series] == ["rank 0", "rank 1", "rank 2", "rank 3"]


async def test_usable_at_80x24(runs: tuple[Path, Store]) -> None:
    _, store = runs
    app = make_app(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        screen = await open_run(pilot, "diverged-lr")
        loss = screen.query_one("#plot-loss", Plot)
        panel = screen.query_one("#findings-panel")
        assert loss.size.width >= 40 and loss.size.height >= 8
        assert panel.size.width >= 24
        assert loss.region.right <= panel.region.x
        assert loss.buckets == (loss.size.width - 9) * 2
        assert len(loss.series[0]) <= loss.buckets


# ---- plots and downsampling --------------------------------------------------------------


def test_min_max_buckets_keep_spikes_and_count_nan(runs: tuple[Path, Store]) -> None:
    _, store = runs
    cur = store.cursor()
    spec = RUN_PLOTS[0]
    found = bucket_series(
        cur, spec_source(spec), ["healthy"], x_range=(1.0, float(STEPS)), buckets=40
    )
    s = found["loss"]
    assert len(s) == 40  # 200 steps into 40 buckets
    assert np.nanmax(s.hi) == pytest.approx(SPIKE_VALUE)  # the one-step spike survives
    assert s.bad.sum() == 0
    nan_run = plot_series(cur, "diverged-lr", spec, (1.0, float(STEPS)), 40)[0]
    assert nan_run.bad.sum() == 3  # steps 198-200 are NaN
    # Buckets are computed in DuckDB: more buckets than steps gives one point per step.
    fine = bucket_series(cur, spec_source(spec), ["healthy"], x_range=(1.0, 200.0), buckets=1000)
    assert len(fine["loss"]) == STEPS
    # A range reads only that range.
    part = bucket_series(cur, spec_source(spec), ["healthy"], x_range=(50.0, 60.0), buckets=100)
    assert part["loss"].x.min() == 50 and part["loss"].x.max() == 60


@pytest.mark.parametrize("run_id", ["diverged-lr", "straggler", "live"])
@pytest.mark.parametrize("x_range", [(1.0, float(STEPS)), (40.0, 61.0)], ids=["all", "zoom"])
def test_all_five_plots_in_one_statement_match_each_plot_alone(
    runs: tuple[Path, Store], run_id: str, x_range: tuple[float, float]
) -> None:
    _, store = runs
    cur = store.cursor()
    together = run_plots(cur, run_id, RUN_PLOTS, x_range, {s.id: 37 for s in RUN_PLOTS})
    assert list(together) == [s.id for s in RUN_PLOTS]
    for spec in RUN_PLOTS:
        alone = plot_series(cur, run_id, spec, x_range, 37)
        got = together[spec.id]
        assert [s.label for s in got] == [s.label for s in alone], spec.id
        assert [s.colour for s in got] == [s.colour for s in alone]
        for a, b in zip(got, alone, strict=True):
            for field in ("x", "lo", "hi", "bad"):
                assert np.array_equal(getattr(a, field), getattr(b, field), equal_nan=True)
    assert len(together["mem"]) == {"diverged-lr": 2, "straggler": 4, "live": 1}[run_id]
    nan_steps = 3 if run_id == "diverged-lr" and x_range[1] == STEPS else 0  # 198-200
    assert np.nansum(together["loss"][0].bad) == nan_steps


def test_smoothed_or_uneven_plots_are_queried_one_by_one(runs: tuple[Path, Store]) -> None:
    _, store = runs
    cur = store.cursor()
    x_range = (1.0, float(STEPS))
    smooth = run_plots(cur, "healthy", RUN_PLOTS, x_range, {s.id: 40 for s in RUN_PLOTS}, True)
    alone = plot_series(cur, "healthy", RUN_PLOTS[0], x_range, 40, smooth=True)[0]
    assert np.array_equal(smooth["loss"][0].hi, alone.hi, equal_nan=True)
    uneven = {s.id: 20 + i for i, s in enumerate(RUN_PLOTS)}
    got = run_plots(cur, "healthy", RUN_PLOTS, x_range, uneven)
    assert [len(got[s.id][0]) for s in RUN_PLOTS] == [20, 21, 22, 23, 24]


async def test_plot_draws_braille_and_finding_marks() -> None:
    from textual.app import App, ComposeResult

    from tunescope.report.curves import Series
    from tunescope.tui.plot import Marker

    class PlotApp(App[None]):
        def compose(self) -> ComposeResult:
            yield Plot("demo", id="p")

    app = PlotApp()
    async with app.run_test(size=(60, 10)) as pilot:
        plot = app.query_one(Plot)
        x = np.arange(1, 101, dtype=float)
        y = np.where(x == 50, 10.0, 1.0)
        bad = np.where(x == 90, 1.0, 0.0)
        plot.set_series([Series("y", x, y, y, bad)], (1.0, 100.0))
        plot.set_markers([Marker(40, 60, "error", "TS102", selected=True)])
        await pilot.pause()
        text = ["".join(seg.text for seg in plot.render_line(r)) for r in range(plot.size.height)]
        canvas = text[1:-2]
        assert any(any(0x2800 < ord(ch) <= 0x28FF for ch in line) for line in canvas)
        assert "×" in canvas[0]  # the NaN bucket is marked on the top row
        assert "▲" in text[-2] and "━" in text[-2]  # the finding on the axis line
        top_label = canvas[0][:8].strip()
        assert float(top_label) >= 10.0
        # the step labels keep their own row: first, middle and the real last step
        assert text[-1].split() == ["1", "50", "100"]

        # a finding over the whole run hides no label
        plot.set_series([Series("y", x, y, y, bad)], (1.0, 5800.0))
        plot.set_markers([Marker(1, 5800, "warning", "TS302")])
        await pilot.pause()
        text = ["".join(seg.text for seg in plot.render_line(r)) for r in range(plot.size.height)]
        assert text[-1].split() == ["1", "2900", "5800"]
        assert text[-2].strip().startswith("└▲━")


# ---- compare and SQL ---------------------------------------------------------------------


async def test_compare_overlays_runs_and_metrics(runs: tuple[Path, Store]) -> None:
    _, store = runs
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        names = run_names(app)
        for name in ("diverged-lr", "healthy"):
            app.screen.query_one("#runs-table", DataTable).move_cursor(row=names.index(name))
            await pilot.press("space")
        await pilot.press("c")
        await settle(pilot, lambda: isinstance(app.screen, CompareScreen))
        screen = app.screen
        plot = screen.query_one("#compare-plot", Plot)
        await settle(pilot, lambda: len(plot.series) == 2)
        assert [s.label for s in plot.series] == ["diverged-lr", "healthy"]
        assert plot.series[0].colour != plot.series[1].colour

        select = screen.query_one("#compare-metric", Select)
        await settle(pilot, lambda: "mem_allocated_mb" in [o[1] for o in select._options])
        select.value = "lr"
        await settle(pilot, lambda: plot.title == "lr" and len(plot.series) == 2)
        assert np.nanmax(plot.series[1].hi) == pytest.approx(1e-4)
        assert np.nanmax(plot.series[0].hi) == pytest.approx(3e-4)

        select.value = "eval_loss"  # not a canonical metric: read from the metrics view
        await settle(pilot, lambda: plot.title == "eval_loss" and len(plot.series) == 2)
        assert [len(s) for s in plot.series] == [STEPS // 50, STEPS // 50]
        assert plot.series[1].hi[0] == pytest.approx(_loss(50) + 0.1)

        # Tick a third run in the list.
        runs_list = screen.query_one("#compare-runs")
        runs_list.select("straggler")
        await settle(pilot, lambda: len(plot.series) == 3)


async def test_compare_shows_the_config_diff(runs: tuple[Path, Store]) -> None:
    _, store = runs
    app = make_app(store)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        names = run_names(app)
        for name in ("diverged-lr", "healthy"):
            app.screen.query_one("#runs-table", DataTable).move_cursor(row=names.index(name))
            await pilot.press("space")
        await pilot.press("c")
        await settle(pilot, lambda: isinstance(app.screen, CompareScreen))
        screen = app.screen
        await settle(pilot, lambda: screen.diff_rows)
        assert screen.diff_rows == [("learning_rate", ["0.0003", "0.0001"])]
        table = diff_table(["diverged-lr", "healthy"], screen.diff_rows)
        assert table.title == "config differs in 1 setting"
        first, marked = table.columns[1]._cells[0], table.columns[2]._cells[0]
        assert str(first) == "0.0003" and str(marked) == "0.0001*"
        assert "bold" in str(marked.style)  # highlighted, and starred: not by colour alone
        # one run ticked: nothing to diff
        screen.query_one("#compare-runs").deselect("healthy")
        await settle(pilot, lambda: screen.diff_rows == [])


async def test_sql_screen_runs_pages_and_refuses_writes(runs: tuple[Path, Store]) -> None:
    _, store = runs
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        await pilot.press("s")
        await settle(pilot, lambda: isinstance(app.screen, SqlScreen))
        screen = app.screen
        table = screen.query_one("#sql-table", DataTable)
        sql = "SELECT run_id, step, loss FROM steps WHERE rank = 0 ORDER BY run_id, step"
        screen.query_one("#sql-input", Input).value = sql
        await pilot.press("enter")
        await settle(pilot, lambda: screen.result is not None)
        total = 3 * STEPS + 50
        assert screen.paged and screen.more
        assert screen.fetched_rows == 101  # one page (and one row to know more follow)
        assert table.row_count == 100  # one page in the widget, never the whole result
        assert [str(c) for c in table.get_row_at(0)] == ["diverged-lr", "1", f"{_loss(1):.6g}"]
        page_text = screen.query_one("#sql-page", Static)
        assert "rows 1–100 · page 1 · ] next" in str(page_text.content)
        assert table.has_focus  # after enter, ] pages the result instead of typing into the query
        await pilot.press("right_square_bracket")
        await settle(pilot, lambda: screen.page == 1)
        assert str(table.get_row_at(0)[1]) == "101"
        for k in range(2, 7):  # on to the last page: the total is known there
            await pilot.press("right_square_bracket")
            await settle(pilot, lambda k=k: screen.page == k)
        assert not screen.more and table.row_count == total - 600
        assert f"rows 601–650 of {total} · page 7/7" in str(page_text.content)
        await pilot.press("right_square_bracket")  # past the end: nothing happens
        await settle(pilot)
        assert screen.page == 6
        await pilot.click("#sql-prev")
        await settle(pilot, lambda: screen.page == 5)
        assert [str(c) for c in table.get_row_at(0)[:2]] == ["straggler", "51"]  # row 501
        assert screen.fetched_rows == 6 * 101 + 50 + 101  # pages 1-6, 7 (50 rows), 6 again

        box = screen.query_one("#sql-input", Input)
        box.focus()
        box.value = "SELECT nope FROM runs"
        await pilot.press("enter")
        await settle(pilot, lambda: bool(screen.error))
        assert "nope" in screen.error
        assert "error:" in str(screen.query_one("#sql-status", Static).content)
        assert not isinstance(app.screen, ErrorModal)  # inline, not a modal
        # the previous query's rows do not stay under the error as if they were its result
        assert screen.result is None and table.row_count == 0 and not table.columns
        assert str(page_text.content) == ""

        box.value = "   "
        await pilot.press("enter")
        await settle(pilot)
        assert "type a query" in str(screen.query_one("#sql-status", Static).content)

        box.value = "DELETE FROM findings"
        await pilot.press("enter")
        await settle(pilot, lambda: "read-only" in screen.error)
        n = store.cursor().execute("SELECT count(*) FROM findings").fetchall()[0][0]
        assert n == 3


async def test_sql_screen_refuses_disguised_writes(tmp_path: Path) -> None:
    """The SQL screen shares the query's two walls: a COPY hidden behind a
    comment and EXPLAIN ANALYZE, a second statement, or a read of another file
    is refused inline, and no file changes."""
    with EventWriter(tmp_path / "r", rank=0) as w:
        for s in range(1, 6):
            w.step(step=s, loss=1.0 / s, lr=1e-4)
    store = Store.open(tmp_path)
    log = tmp_path / "r" / "events" / "rank-0.jsonl"
    manifest = store.cache.manifest_path
    before = (log.read_bytes(), manifest.read_bytes())
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        await pilot.press("s")
        await settle(pilot, lambda: isinstance(app.screen, SqlScreen))
        screen = app.screen
        box = screen.query_one("#sql-input", Input)
        for sql, says in (
            (f"/* x */ EXPLAIN ANALYZE COPY (SELECT 'pwned' AS a) TO '{log}' (FORMAT csv)", "COPY"),
            (f"-- c\nSELECT 1; COPY (SELECT 1) TO '{manifest}'", "statement 2 is COPY"),
            ("/*+ h */ INSTALL httpfs", "LOAD"),
            (f"SELECT * FROM read_csv('{log}')", "views only"),
        ):
            screen.error = ""
            box.value = sql
            await pilot.press("enter")
            await settle(pilot, lambda: bool(screen.error))
            assert "refused" in screen.error and says in screen.error, screen.error
            assert not isinstance(app.screen, ErrorModal)
    assert (log.read_bytes(), manifest.read_bytes()) == before
    store.close()


async def test_sql_screen_fetches_one_page_of_a_big_table(tmp_path: Path) -> None:
    """``SELECT * FROM steps`` over more than 10,000 rows fetches one page, not all."""
    big = 12_000
    with EventWriter(tmp_path / "big", rank=0) as w:
        for s in range(1, big + 1):
            w.step(step=s, loss=1.0 + 1.0 / s, lr=1e-4)
            if s % 1000 == 0:
                w.flush()  # the writer drops step events when its queue is full
    store = Store.open(tmp_path)
    assert store.cursor().execute("SELECT count(*) FROM steps").fetchall()[0][0] == big
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        await pilot.press("s")
        await settle(pilot, lambda: isinstance(app.screen, SqlScreen))
        screen = app.screen
        table = screen.query_one("#sql-table", DataTable)
        screen.query_one("#sql-input", Input).value = "SELECT * FROM steps ORDER BY step;"
        await pilot.press("enter")
        await settle(pilot, lambda: screen.result is not None)
        assert screen.fetched_rows == 101
        assert screen.result.num_rows == 100 and table.row_count == 100
        assert "more than 100 rows" in str(screen.query_one("#sql-status", Static).content)
        assert table.has_focus
        await pilot.press("right_square_bracket")
        await settle(pilot, lambda: screen.page == 1)
        assert screen.fetched_rows == 202
        step_col = screen.result.column_names.index("step")
        assert str(table.get_row_at(0)[step_col]) == "101"

        # EXPLAIN and several statements run as they are (their results are small).
        box = screen.query_one("#sql-input", Input)
        box.focus()
        box.value = "SELECT 1 AS a; SELECT count(*) AS n FROM steps"
        await pilot.press("enter")
        await settle(pilot, lambda: not screen.paged and screen.result.column_names == ["n"])
        assert screen.result.to_pylist() == [{"n": big}] and screen.fetched_rows == 1
        box.focus()  # the result took the focus after the last query
        box.value = "EXPLAIN SELECT * FROM steps"
        await pilot.press("enter")
        await settle(
            pilot, lambda: not screen.paged and "explain_key" in screen.result.column_names
        )
        box.focus()
        box.value = "SELECT 1 AS a -- a trailing comment"
        await pilot.press("enter")
        await settle(pilot, lambda: screen.result.column_names == ["a"])
        assert screen.result.to_pylist() == [{"a": 1}]


# ---- live ingest, analysis and errors ----------------------------------------------------


async def test_running_run_updates_when_lines_are_appended(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_run(root, "live", steps=50, end=None)
    write_run(root, "healthy", steps=20)
    store = Store.open(root)
    app = make_app(store, live=True, interval=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        screen = await open_run(pilot, "live")
        assert screen.extent == (1, 50)
        runs_screen = app.screen_stack[0]

        with EventWriter(root / "live", rank=0) as w:  # appends to events/rank-0.jsonl
            for s in range(51, 81):
                write_step(w, s, 0)
        await settle(pilot, lambda: screen.extent == (1, 80), timeout=20)
        loss = screen.query_one("#plot-loss", Plot)
        await settle(pilot, lambda: loss.x_range == (1.0, 80.0))
        assert loss.series[0].x.max() == 80
        assert "step 80/400" in str(screen.query_one("#run-title", Static).content)
        # The runs list underneath was refreshed as well.
        await settle(pilot, lambda: any(r["last_step"] == 80 for r in runs_screen.rows))
        assert app.ingests >= 1


async def test_a_run_ingested_by_another_process_shows_within_the_interval(
    tmp_path: Path,
) -> None:
    """Another process ingests a new run (as a `tunescope watch` beside the TUI
    does): the TUI's own ingest then finds nothing new to read, and the run
    must still show at its next poll, not at the next periodic reload (30 s)."""
    from tunescope.ingest.live.follow import REFRESH_EVERY_S

    root = tmp_path / "runs"
    write_run(root, "healthy", steps=20)
    store = Store.open(root)
    interval = 0.5
    app = make_app(store, live=True, interval=interval)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded and app.ingests >= 1)
        await settle(pilot, lambda: not app._updating)
        # No await from here to the end of the subprocess: the app's timers run on
        # this event loop, so the TUI cannot ingest the new run itself meanwhile.
        write_run(root, "newcomer", steps=30)
        done = subprocess.run(
            [sys.executable, "-m", "tunescope", "ingest", str(root)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        t0 = time.monotonic()
        await settle(pilot, lambda: "newcomer" in run_names(app), timeout=REFRESH_EVERY_S / 3)
        seen_after = time.monotonic() - t0
        assert not store.last_report.modified  # read by the other process, not by the TUI
    assert seen_after < REFRESH_EVERY_S / 3


def test_finding_rows_round_trip_through_the_store(tmp_path: Path) -> None:
    from tunescope.detectors.engine import finding_rows

    write_run(tmp_path, "healthy", steps=SPIKE_STEP, spike=True)
    store = Store.open(tmp_path)
    finding = Finding(
        run="healthy",
        detector="TS101",
        name="loss-spike",
        severity=Severity.WARNING,
        step_start=SPIKE_STEP,
        step_end=SPIKE_STEP,
        message="loss jumped to 9.5 at step 77",
        suggestion="inspect the batch",
        rank=0,
        evidence={"value": np.float64(9.5), "median": float("nan")},
    )
    store.save_findings(finding_rows([finding]), ["healthy"])
    rows = (
        store.cursor()
        .execute(
            "SELECT detector, severity, step_start, rank, evidence->>'value' FROM findings "
            "WHERE run_id = 'healthy'"
        )
        .fetchall()
    )
    assert rows == [("TS101", "warning", SPIKE_STEP, 0, "9.5")]


async def test_analysis_runs_on_start(tmp_path: Path) -> None:
    store = build_runs(tmp_path / "runs")  # its own copy: the analysis replaces findings
    app = make_app(store, analyze=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        await app.workers.wait_for_complete()
        n = (
            store.cursor()
            .execute("SELECT count(*) FROM findings WHERE run_id = 'diverged-lr'")
            .fetchall()[0][0]
        )
        assert n >= 1


async def test_findings_read_analysing_until_the_first_analysis_is_stored(
    tmp_path: Path,
) -> None:
    from tunescope.detectors.engine import analyze as engine_analyze

    store = build_runs(tmp_path / "runs")  # its own copy: the analysis replaces findings
    gate = threading.Event()

    def held(store: Store, **kw: Any) -> list[Finding]:
        gate.wait(30)  # the real engine, started only when the test has looked
        return engine_analyze(store, **kw)

    app = make_app(store, analyze=True, detect=held)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        cells = {r[1]: r[7] for r in table_rows(app)}
        assert cells["healthy"] == "analysing…"  # nothing stored yet: not a bare "–"
        assert cells["diverged-lr"] == "1E 1W"  # findings already stored are shown
        state = app.screen.query_one("#runs-state", Static)
        assert "analysing…" in str(state.content)
        gate.set()
        await settle(pilot, lambda: not app._updating and not app.analysing)
        await settle(pilot, lambda: "analysing…" not in str(state.content))
        cells = {r[1]: r[7] for r in table_rows(app)}
        assert "analysing…" not in cells.values()
        assert cells["diverged-lr"] != "–"


async def test_live_analysis_stores_findings_as_the_engine_does(tmp_path: Path) -> None:
    """The TUI saves the detectors' findings with the engine's own ``finding_rows``:
    evidence made JSON-safe (numpy scalars, NaN) with its keys sorted."""
    from tunescope.detectors import engine

    store = build_runs(tmp_path / "runs")  # its own copy: the analysis replaces findings
    found = [
        Finding(
            run="diverged-lr",
            detector="TS999",
            name="probe",
            severity=Severity.WARNING,
            step_start=5,
            step_end=9,
            message="probe finding",
            suggestion="none",
            rank=1,
            evidence={"zeta": np.int64(3), "alpha": np.float64(2.5), "mid": float("nan")},
        )
    ]
    # as if the engine found exactly this
    app = make_app(store, analyze=True, detect=lambda store, **kw: found)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        await app.workers.wait_for_complete()
        await settle(pilot, lambda: not app._updating)
        rows = (
            store.cursor()
            .execute(
                "SELECT detector, rank, step_start, step_end, CAST(evidence AS VARCHAR) "
                "FROM findings WHERE run_id = 'diverged-lr'"
            )
            .fetchall()
        )
    expected = engine.finding_rows(found)[0]["evidence"]
    assert expected == '{"alpha": 2.5, "mid": "NaN", "zeta": 3}'
    assert rows == [("TS999", 1, 5, 9, expected)]


async def test_a_failing_detector_is_reported_and_the_findings_stay(
    runs: tuple[Path, Store],
) -> None:
    _, store = runs
    calls: list[dict[str, Any]] = []

    def failing(store: Store, **kw: Any) -> list[Finding]:
        calls.append(kw)
        raise ValueError("threshold must be positive")

    app = make_app(store, analyze=True, detect=failing)  # a detector that raises: runs on mount
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        await settle(pilot, lambda: not app._updating and len(app._notifications) > 0)
        assert calls == [{"select": None, "ignore": None, "config": None, "run_ids": None}]
        note = next(iter(app._notifications))
        assert "detectors failed" in note.message and "threshold must be positive" in note.message
        assert not isinstance(app.screen, ErrorModal)
        assert {r[1]: r[7] for r in table_rows(app)}["diverged-lr"] == "1E 1W"


async def test_worker_errors_open_one_modal(runs: tuple[Path, Store]) -> None:
    _, store = runs
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        store.con.execute("DROP VIEW findings")  # the next runs query fails
        await pilot.press("x")
        await settle(pilot, lambda: isinstance(app.screen, ErrorModal))
        message = str(app.screen.query_one("#error-message", Static).content)
        assert "findings" in message
        app.screen_stack[0].load()  # the same failure again: still one modal
        await settle(pilot)
        assert len(app.screen_stack) == 2
        await pilot.press("escape")
        await settle(pilot, lambda: isinstance(app.screen, RunsScreen))


async def test_help_screen_lists_keys(runs: tuple[Path, Store]) -> None:
    _, store = runs
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        await pilot.press("question_mark")
        await pilot.pause()
        from tunescope.tui.help_screen import HelpScreen, help_plain

        assert isinstance(app.screen, HelpScreen)
        shown = help_plain()
        # Every key of every screen's bindings is documented.
        for screen_cls in (RunsScreen, RunScreen, SqlScreen, CompareScreen):
            for b in screen_cls.BINDINGS:
                key = {"question_mark": "?", "slash": "/", "right_square_bracket": "]",
                       "left_square_bracket": "["}.get(b.key, b.key)  # fmt: skip
                assert key in shown, (screen_cls.__name__, b.key)
        for line in ("n / p", "next / previous finding", "] / [", "unzoom", "straggler"):
            assert line in shown
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


def test_cli_tui_reports_a_missing_directory(tmp_path: Path, capsys: Any) -> None:
    from tunescope.cli import main

    code = main(["tui", str(tmp_path / "nowhere")])
    assert code == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["tui", str(tmp_path), "--interval", "0"]) == 2


async def test_run_header_says_what_the_log_cannot_show(tmp_path: Path) -> None:
    with EventWriter(tmp_path / "runs" / "foreign", rank=0) as w:
        w.run_start(format="some-trainer", per_rank=False, logging_steps=10)
        for step in range(10, 210, 10):
            w.step(step=step, loss=2.0 - step / 1000, lr=1e-4)
    store = Store.open(tmp_path / "runs", tmp_path / "cache")
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        screen = await open_run(pilot, "foreign")
        line = screen.query_one("#run-limits", Static)
        assert line.display
        text = str(line.render())
        assert "cannot show: stragglers and hung ranks: some-trainer has one row" in text
        assert "no grad norms" in text


async def test_marks_show_on_the_row_and_home_end_move(runs: tuple[Path, Store]) -> None:
    _, store = runs
    app = make_app(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        table = app.screen.query_one("#runs-table", DataTable)
        table.focus()
        await pilot.press("space")
        await settle(pilot)
        assert "1 marked" in str(app.screen.query_one("#runs-state", Static).render())
        assert str(table.get_row_at(0)[0]) == "●"
        mark = table.columns[next(iter(table.columns))]
        assert mark.get_render_width(table) >= 2  # the mark column is wide enough to show it
        await pilot.press("end")
        await settle(pilot)
        assert table.cursor_row == table.row_count - 1
        await pilot.press("home")
        await settle(pilot)
        assert table.cursor_row == 0


async def test_runs_list_fits_80_columns_with_short_names(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    deep = "experiments/2026-11-30/qwen2.5-7b-instruct-lora-r64-alpha128-lr2e-4/runs/Nov30_12-00-00_host"
    write_run(root, deep, steps=30)
    write_run(root, "b-short", steps=30)
    store = Store.open(root, tmp_path / "cache")
    app = make_app(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        table = app.screen.query_one("#runs-table", DataTable)
        assert table.virtual_size.width <= 80
        # what matters at 80 columns: the name, the status, the findings (whole)
        assert [str(c.label) for c in table.columns.values()] == ["", "run", "status", "findings"]
        names = [str(table.get_row_at(i)[1]) for i in range(table.row_count)]
        assert names[0] == "b-short"  # sorted by the name shown
        assert names[1].startswith("exper") and "…" in names[1] and 30 <= len(names[1]) <= 48
        assert names[1].endswith("Nov30_12-00-00_host")
        table.focus()
        await pilot.press("down")
        await settle(pilot)
        state = app.screen.query_one("#runs-state", Static)
        shown = str(state.render())
        # the highlighted id, as much of it as the bar holds, both ends readable
        assert "experiments/2026-11-30/" in shown and shown.endswith("Nov30_12-00-00_host")
        assert len(shown) <= state.size.width - 2

    wide = make_app(store)
    async with wide.run_test(size=(120, 24)) as pilot:  # a wide terminal: every column
        await settle(pilot, lambda: wide.screen.loaded)
        table = wide.screen.query_one("#runs-table", DataTable)
        assert len(table.columns) == 8
        await pilot.resize_terminal(80, 24)  # narrowed while open: the columns follow
        await settle(pilot, lambda: len(table.columns) == 4)
        assert table.row_count == 2


async def test_empty_folder_and_empty_filter_say_so(
    tmp_path: Path, runs: tuple[Path, Store]
) -> None:
    (tmp_path / "empty").mkdir()
    app = make_app(Store.open(tmp_path / "empty", tmp_path / "cache"), live=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        box = app.screen.query_one("#runs-empty", Static)
        assert box.display and "yet: waiting for logs" in str(box.render())
    _, store = runs
    app = make_app(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        app.screen.query_one("#runs-filter", Input).value = "no-such-run"
        await settle(pilot, lambda: app.screen.matched == 0)
        box = app.screen.query_one("#runs-empty", Static)
        assert box.display and "No runs match the filter" in str(box.render())


async def test_compare_ticks_differ_by_more_than_colour(runs: tuple[Path, Store]) -> None:
    _, store = runs
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        app.push_screen(CompareScreen(["healthy"]))
        await settle(pilot, lambda: isinstance(app.screen, CompareScreen))
        box = app.screen.query_one("#compare-runs")
        await settle(pilot, lambda: box.option_count > 0)
        prompts = {o.value: str(o.prompt) for o in box._options}
        assert prompts["healthy"].startswith("✓ ")
        assert prompts["straggler"].startswith("  ")
        box.select("straggler")
        await settle(pilot)
        assert str(box.get_option("straggler").prompt).startswith("✓ ")


async def test_guard_interventions_are_marked_on_the_curves(tmp_path: Path) -> None:
    for rank in (0, 1):  # each rank logs the skip it took part in: one mark
        with EventWriter(tmp_path / "runs" / "guarded", rank=rank) as w:
            w.run_start(total_steps=40)
            for step in range(1, 41):
                w.step(step=step, loss=float("nan") if step == 17 else 3.0 - step / 40)
                if step == 17:
                    w.intervention(step, "skip", "TS001", steps=[17, 17])
            w.run_end("completed")
    store = Store.open(tmp_path / "runs", tmp_path / "cache")
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        screen = await open_run(pilot, "guarded")
        loss = screen.query_one("#plot-loss", Plot)
        guard = [m for m in loss.markers if m.label.startswith("guard")]
        assert [(m.start, m.end, m.label) for m in guard] == [(17, 17, "guard skip (TS001)")]


async def test_report_key_writes_the_marked_runs_or_the_open_one(
    runs: tuple[Path, Store], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json as _json
    import re

    _, store = runs
    monkeypatch.chdir(tmp_path)
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        names = run_names(app)
        await pilot.press("space", "space")  # mark the first two rows
        await pilot.press("r")
        two = tmp_path / "tunescope-report-2-runs.html"
        await settle(pilot, two.exists)
        page = two.read_text(encoding="utf-8")
        table = re.search(r'<table id="runs-table".*?</table>', page, flags=re.S).group(0)
        assert all(n in table for n in names[:2]) and not any(n in table for n in names[2:])
        screen = await open_run(pilot, "diverged-lr")
        await pilot.press("r")
        one = tmp_path / "tunescope-report-diverged-lr.html"
        await settle(pilot, one.exists)
        assert screen.is_current
    page = one.read_text(encoding="utf-8")
    data = re.search(r'<script id="tunescope-data" type="application/json">(.*?)</script>',
                     page, flags=re.S).group(1)  # fmt: skip
    doc = _json.loads(data)
    # the stored findings (TS102, TS101) are shaded on the run's five charts
    assert sorted(f["detector"] for f in doc["runs"]["diverged-lr"]["findings"]) == [
        "TS101", "TS102",
    ]  # fmt: skip
    assert [c["id"] for c in doc["runs"]["diverged-lr"]["charts"]] == [
        "loss", "lr", "grad", "mem", "time",
    ]  # fmt: skip


async def test_the_run_header_names_why_a_crashed_run_died(tmp_path: Path) -> None:
    import shutil

    crash = Path(__file__).resolve().parents[2] / "fixtures" / "formats" / "crash" / "oom-hf"
    shutil.copytree(crash, tmp_path / "runs" / "oom-hf")
    store = Store.open(tmp_path / "runs")
    app = make_app(store, analyze=True)
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot, lambda: app.screen.loaded)
        await app.workers.wait_for_complete()
        screen = await open_run(pilot, "oom-hf")
        title = screen.query_one("#run-title", Static)
        await settle(pilot, lambda: "failed (CUDA out of memory)" in str(title.content))
