"""Snapshot tests (pytest-textual-snapshot): each screen at 80x24 and 200x50 over fixed data.

Determinism: the runs are written with fixed timestamps, no screen shows wall
clock time (the SQL timer is pinned with ``clock``), cursor blink is off, live
ingest and analysis are off. Update with ``pytest --snapshot-update`` after
checking the new SVGs by eye.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_tui import build_runs, make_app, settle
from textual.pilot import Pilot
from textual.widgets import DataTable, Input

from tunescope.ingest.store.database import Store
from tunescope.tui.plot import Plot

# every screen at the smallest supported terminal and at a large one
SIZES = [(80, 24), (200, 50)]


@pytest.fixture(params=SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def size(request: pytest.FixtureRequest) -> tuple[int, int]:
    return request.param


@pytest.fixture(scope="module")
def snap_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tui-snap") / "runs"
    build_runs(root).close()
    return root


def no_blink(pilot: Pilot) -> None:
    for box in pilot.app.screen.query(Input):
        box.cursor_blink = False


async def runs_loaded(pilot: Pilot) -> None:
    await settle(pilot, lambda: pilot.app.screen.loaded)
    no_blink(pilot)


async def open_diverged(pilot: Pilot) -> None:
    app = pilot.app
    await settle(pilot, lambda: app.screen.loaded)
    names = [r["run_id"] for r in app.screen.rows]
    app.screen.query_one("#runs-table", DataTable).move_cursor(row=names.index("diverged-lr"))
    await pilot.press("enter")
    await settle(pilot, lambda: getattr(app.screen, "extent", None) is not None)
    await settle(pilot, lambda: all(p.loaded for p in app.screen.query(Plot)))
    await settle(pilot, lambda: len(app.screen.findings) == 2)


def test_runs_screen(snap_compare, snap_root: Path, size: tuple[int, int]) -> None:
    store = Store(snap_root)
    assert snap_compare(make_app(store), terminal_size=size, run_before=runs_loaded)


def test_run_screen_zoomed_to_divergence(
    snap_compare, snap_root: Path, size: tuple[int, int]
) -> None:
    async def run_before(pilot: Pilot) -> None:
        await open_diverged(pilot)
        await pilot.press("n")  # select the TS102 finding and zoom to it
        await settle(pilot, lambda: pilot.app.screen.zoom is not None)
        screen = pilot.app.screen
        await settle(pilot, lambda: screen.query_one("#plot-loss", Plot).x_range == screen.zoom)

    store = Store(snap_root)
    assert snap_compare(make_app(store), terminal_size=size, run_before=run_before)


def test_run_screen_ranks_tab(snap_compare, snap_root: Path, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot) -> None:
        app = pilot.app
        await settle(pilot, lambda: app.screen.loaded)
        names = [r["run_id"] for r in app.screen.rows]
        app.screen.query_one("#runs-table", DataTable).move_cursor(row=names.index("straggler"))
        await pilot.press("enter")
        await settle(pilot, lambda: getattr(app.screen, "extent", None) is not None)
        await pilot.press("2")
        grid = app.screen.query_one("#rank-grid")
        await settle(pilot, lambda: grid.slowest is not None)

    store = Store(snap_root)
    assert snap_compare(make_app(store), terminal_size=size, run_before=run_before)


def test_compare_screen(snap_compare, snap_root: Path, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot) -> None:
        app = pilot.app
        await settle(pilot, lambda: app.screen.loaded)
        names = [r["run_id"] for r in app.screen.rows]
        table = app.screen.query_one("#runs-table", DataTable)
        for name in ("diverged-lr", "healthy", "straggler"):
            table.move_cursor(row=names.index(name))
            await pilot.press("space")
        await pilot.press("c")
        await settle(pilot, lambda: hasattr(app.screen, "metric"))
        plot = app.screen.query_one("#compare-plot", Plot)
        await settle(pilot, lambda: len(plot.series) == 3)

    store = Store(snap_root)
    assert snap_compare(make_app(store), terminal_size=size, run_before=run_before)


def test_sql_screen(snap_compare, snap_root: Path, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot) -> None:
        app = pilot.app
        await settle(pilot, lambda: app.screen.loaded)
        await pilot.press("s")
        await settle(pilot, lambda: hasattr(app.screen, "result"))
        no_blink(pilot)
        app.screen.query_one("#sql-input", Input).value = (
            "SELECT run_id, detector, severity, step_start, suggestion FROM findings "
            "ORDER BY run_id, step_start"
        )
        await pilot.press("enter")
        await settle(pilot, lambda: app.screen.result is not None)

    store = Store(snap_root)
    assert snap_compare(make_app(store), terminal_size=size, run_before=run_before)


def test_help_screen(snap_compare, snap_root: Path, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot) -> None:
        await runs_loaded(pilot)
        await pilot.press("question_mark")
        await settle(pilot)

    store = Store(snap_root)
    assert snap_compare(make_app(store), terminal_size=size, run_before=run_before)


# ---- real names and real runs at the smallest terminal ------------------------------

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def analysed_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fixtures/real and fixtures/runs ingested and analysed once, as
    `tunescope analyze` stores them (the snapshots then run no detector)."""
    from tunescope.detectors.engine import analyze, finding_rows

    caches = {}
    for name in ("real", "runs"):
        cache = tmp_path_factory.mktemp(f"snap-{name}")
        store = Store.open(REPO / "fixtures" / name, cache)
        store.save_findings(finding_rows(analyze(store)), store.run_ids())
        store.close()
        caches[name] = cache
    return caches


def test_real_runs_at_80x24(snap_compare, analysed_cache: dict[str, Path]) -> None:
    """Real run names at 80 columns: name, status and findings, nothing cut to "fi",
    and the highlighted run's whole id."""

    async def run_before(pilot: Pilot) -> None:
        await runs_loaded(pilot)
        names = [r["run_id"] for r in pilot.app.screen.rows]
        table = pilot.app.screen.query_one("#runs-table", DataTable)
        # a long id is shortened in the table; the state bar shows it whole
        table.move_cursor(row=next(i for i, n in enumerate(names) if n.startswith("qwen35")))
        await settle(pilot)

    store = Store(REPO / "fixtures" / "real", analysed_cache["real"])
    assert snap_compare(make_app(store), terminal_size=(80, 24), run_before=run_before)


@pytest.mark.parametrize(
    ("root", "run_id"),
    [("real", "megatron-gpt2-finetune"), ("runs", "fault-freeze-adapter")],
)
def test_run_axis_keeps_its_step_labels_under_findings(
    snap_compare, analysed_cache: dict[str, Path], root: str, run_id: str
) -> None:
    """Finding marks sit on the axis line; the step labels keep a row of their
    own, and the last one is the run's real last step."""

    async def run_before(pilot: Pilot) -> None:
        app = pilot.app
        await runs_loaded(pilot)
        names = [r["run_id"] for r in app.screen.rows]
        app.screen.query_one("#runs-table", DataTable).move_cursor(row=names.index(run_id))
        await pilot.press("enter")
        await settle(pilot, lambda: getattr(app.screen, "extent", None) is not None)
        await settle(pilot, lambda: all(p.loaded for p in app.screen.query(Plot)))
        await settle(pilot, lambda: bool(app.screen.findings))

    store = Store(REPO / "fixtures" / root, analysed_cache[root])
    assert snap_compare(make_app(store), terminal_size=(80, 24), run_before=run_before)
