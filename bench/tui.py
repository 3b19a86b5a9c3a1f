"""TUI benchmark: first paint over many runs and drawing a very long run.

Runs the real app headless (``App.run_test``) and prints, next to each figure,
a baseline measured in the same process:

- first paint of the runs screen over ``--runs`` runs (default 1,000), against
  the raw DuckDB query behind it;
- opening a ``--steps``-step run (default 100,000, 2 ranks) until all five
  plots are drawn, against fetching that run's loss column whole from DuckDB;
- zooming to a finding on that run, and one plot's draw from its buckets.

Usage: python bench/tui.py [--runs 1000] [--steps 100000] [--dir DIR]
(``--dir`` keeps the generated runs and their cache for the next time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

T0 = 1_760_000_000.0


def write_jsonl(path: Path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for e in lines:
            f.write(json.dumps(e, separators=(",", ":")) + "\n")


def make_many(root: Path, n: int, steps: int = 30) -> None:
    """``n`` small finished runs in the native format."""
    for i in range(n):
        name = f"sweep-{i:04d}"
        ev = [
            {"v": 1, "kind": "run_start", "run": name, "rank": 0, "ts": T0, "model": "tiny",
             "finetuning_type": "lora", "lora_r": 8, "world_size": 1, "total_steps": steps}
        ]  # fmt: skip
        for s in range(1, steps + 1):
            ev.append(
                {"v": 1, "kind": "step", "run": name, "rank": 0, "step": s, "ts": T0 + s,
                 "loss": 2.0 * math.exp(-s / 20) + 0.5 + i * 1e-4, "lr": 1e-4}
            )  # fmt: skip
        ev.append({"v": 1, "kind": "run_end", "run": name, "rank": 0, "ts": T0 + steps + 1,
                   "status": "completed"})  # fmt: skip
        write_jsonl(root / name / "events" / "rank-0.jsonl", ev)


def make_long(root: Path, steps: int, ranks: int = 2) -> None:
    """One ``steps``-step run with a loss spike and per-rank metrics."""
    name = "long-run"
    for rank in range(ranks):
        path = root / name / "events" / f"rank-{rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            if rank == 0:
                f.write(json.dumps({"v": 1, "kind": "run_start", "run": name, "rank": 0,
                                    "ts": T0, "world_size": ranks, "total_steps": steps}) + "\n")  # fmt: skip
            for s in range(1, steps + 1):
                loss = 2.0 * math.exp(-s / (steps / 5)) + 0.4 + 0.05 * math.sin(s / 7)
                if s == steps // 2:
                    loss = 12.0
                f.write(
                    f'{{"v":1,"kind":"step","run":"{name}","rank":{rank},"step":{s},'
                    f'"ts":{T0 + s * 0.5},"loss":{loss:.5f},"lr":{1e-4 * min(1, s / 1000):.3e},'
                    f'"grad_norm":1.0,"grad_norm_adapter":0.9,"grad_norm_backbone":0.1,'
                    f'"mem_allocated_mb":{4000 + s * 0.01 + rank * 50:.1f},'
                    f'"compute_time_s":{0.3 * (1.3 if rank == 1 else 1.0):.3f},"step_time_s":0.5}}\n'
                )


def best(xs: list[float]) -> float:
    return min(xs)


async def first_paint(store, size=(120, 40)) -> tuple[float, float]:
    """Wall and CPU seconds (all threads) from creating the app to the runs drawn."""
    from tunescope.tui.app import TunescopeApp

    t, c = time.perf_counter(), time.process_time()
    app = TunescopeApp(store, live=False, analyze=False)
    async with app.run_test(size=size) as pilot:
        while not getattr(app.screen, "loaded", False):
            await asyncio.sleep(0.002)
        await pilot.pause()  # the frame with the rows is drawn
        elapsed = (time.perf_counter() - t, time.process_time() - c)
    return elapsed


async def open_short_run(store, size=(120, 40)) -> float:
    """Seconds from Enter on a 30-step run (no findings) until its plots are
    drawn: the screen's own cost, whatever the run's length (the baseline)."""
    from tunescope.tui.app import TunescopeApp
    from tunescope.tui.plot import Plot
    from tunescope.tui.run_screen import RunScreen

    app = TunescopeApp(store, live=False, analyze=False)
    async with app.run_test(size=size) as pilot:
        while not getattr(app.screen, "loaded", False):
            await asyncio.sleep(0.002)
        t = time.perf_counter()
        await pilot.press("enter")
        while not (
            isinstance(app.screen, RunScreen)
            and all(p.loaded for p in app.screen.query(Plot))
            and app.screen.query_one("#findings-title").render().plain == "No findings"
        ):
            await asyncio.sleep(0.002)
        await pilot.pause()
        return time.perf_counter() - t


async def open_long_run(store, size=(120, 40)) -> tuple[float, float, float]:
    from tunescope.tui.app import TunescopeApp
    from tunescope.tui.plot import Plot
    from tunescope.tui.run_screen import RunScreen

    app = TunescopeApp(store, live=False, analyze=False)
    async with app.run_test(size=size) as pilot:
        while not getattr(app.screen, "loaded", False):
            await asyncio.sleep(0.002)
        names = [r["run_id"] for r in app.screen.rows]
        app.screen.query_one("#runs-table").move_cursor(row=names.index("long-run"))
        t, c = time.perf_counter(), time.process_time()
        await pilot.press("enter")
        while not (
            isinstance(app.screen, RunScreen)
            and all(p.loaded for p in app.screen.query(Plot))
            and app.screen.findings
        ):
            await asyncio.sleep(0.002)
        await pilot.pause()
        opened = time.perf_counter() - t
        opened_cpu = time.process_time() - c
        screen = app.screen
        t = time.perf_counter()
        await pilot.press("n")  # zoom to the finding
        loss = screen.query_one("#plot-loss", Plot)
        while not (screen.zoom and all(p.x_range == screen.zoom for p in screen.query(Plot))):
            await asyncio.sleep(0.002)
        await pilot.pause()
        zoomed = time.perf_counter() - t
        assert loss.series and len(loss.series[0]) <= loss.buckets
    return opened, opened_cpu, zoomed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, help="keep generated runs here")
    args = ap.parse_args()

    from tunescope.ingest.store.database import Store
    from tunescope.report.curves import RUN_PLOTS, spec_source
    from tunescope.tui.plot import Plot
    from tunescope.tui.queries import RunFilter, bucket_series, runs_page

    base = args.dir or Path(tempfile.mkdtemp(prefix="tunescope-bench-tui-"))
    many, long_root, one = base / "many", base / "long", base / "one"
    if not one.exists():
        make_many(one, 1)
    if not many.exists():
        t = time.perf_counter()
        make_many(many, args.runs)
        print(f"wrote {args.runs} runs in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    if not long_root.exists():
        t = time.perf_counter()
        make_long(long_root, args.steps)
        print(f"wrote a {args.steps}-step run in {time.perf_counter() - t:.1f}s", file=sys.stderr)

    t = time.perf_counter()
    store = Store.open(many)
    print(f"ingest {args.runs} runs: {time.perf_counter() - t:.2f}s (not part of first paint)")

    # ---- first paint over many runs ------------------------------------------------
    q = []
    for _ in range(args.repeat):
        cur = store.cursor()
        t = time.perf_counter()
        _rows, _, total = runs_page(cur, RunFilter())
        q.append(time.perf_counter() - t)
        cur.close()
    paint = [asyncio.run(first_paint(store)) for _ in range(args.repeat)]
    small = Store.open(one)
    paint_one = [asyncio.run(first_paint(small)) for _ in range(args.repeat)]
    small.close()
    wall, cpu = best([p[0] for p in paint]), best([p[1] for p in paint])
    wall1, cpu1 = best([p[0] for p in paint_one]), best([p[1] for p in paint_one])
    print(
        f"first paint, {total} runs: {wall * 1000:.0f} ms wall, {cpu * 1000:.0f} ms CPU "
        f"(target < 1000 ms)\n"
        f"  baselines in this run: the same app over 1 run {wall1 * 1000:.0f} ms wall, "
        f"{cpu1 * 1000:.0f} ms CPU (ratio {wall / wall1:.2f}x wall, {cpu / cpu1:.2f}x CPU); "
        f"the raw runs query {best(q) * 1000:.1f} ms"
    )
    store.close()

    # ---- a long run --------------------------------------------------------------------
    t = time.perf_counter()
    store = Store.open(long_root)
    print(f"ingest a {args.steps}-step 2-rank run: {time.perf_counter() - t:.2f}s")
    store.save_findings(
        [
            {"run_id": "long-run", "rank": None, "detector": "TS101", "name": "loss-spike",
             "severity": "warning", "step_start": args.steps // 2, "step_end": args.steps // 2,
             "message": "loss spike", "suggestion": "inspect the batch", "evidence": "{}"}
        ],
        ["long-run"],
    )  # fmt: skip
    cur = store.cursor()
    raw, buck = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        rel = cur.execute("SELECT step, loss FROM steps WHERE run_id = 'long-run'")
        full = rel.fetchnumpy()
        raw.append(time.perf_counter() - t)
        t = time.perf_counter()
        found = bucket_series(
            cur, spec_source(RUN_PLOTS[0]), ["long-run"],
            x_range=(1.0, float(args.steps)), buckets=222,
        )  # fmt: skip
        buck.append(time.perf_counter() - t)
    n_rows = len(full["step"])
    print(
        f"one curve of {n_rows:,} rows: min/max buckets in DuckDB {best(buck) * 1000:.1f} ms "
        f"-> {len(found['loss'])} points; baseline fetching the column whole "
        f"{best(raw) * 1000:.1f} ms; ratio {best(buck) / best(raw):.2f}x"
    )
    plot = Plot("loss")
    plot.set_series(list(found.values()), (1.0, float(args.steps)))
    draws = []
    for _ in range(args.repeat * 3):
        t = time.perf_counter()
        plot._draw(120, 10)
        draws.append(time.perf_counter() - t)
    print(f"drawing that curve from its buckets (111x8 cells): {best(draws) * 1000:.1f} ms")
    cur.close()

    short = Store(one)
    runs, shorts = [], []
    for _ in range(args.repeat):  # interleaved: the long run, then the short one
        runs.append(asyncio.run(open_long_run(store)))
        shorts.append(asyncio.run(open_short_run(short)))
    short.close()
    opened = best([r[0] for r in runs])
    opened_cpu = best([r[1] for r in runs])
    zoomed = best([r[2] for r in runs])
    med = statistics.median([r[0] for r in runs])
    print(
        f"open the {args.steps}-step run until all 5 plots are drawn: {opened * 1000:.0f} ms "
        f"wall best, {med * 1000:.0f} ms median, {opened_cpu * 1000:.0f} ms CPU; zoom to a "
        f"finding: {zoomed * 1000:.0f} ms; ratio to fetching one column whole: "
        f"{opened / best(raw):.1f}x\n"
        f"  baseline in this run: the same screen over a 30-step run {best(shorts) * 1000:.0f} ms "
        f"best, {statistics.median(shorts) * 1000:.0f} ms median (ratio {opened / best(shorts):.2f}x "
        f"best, {med / statistics.median(shorts):.2f}x median)"
    )
    store.close()
    try:
        import os

        print(f"(load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
