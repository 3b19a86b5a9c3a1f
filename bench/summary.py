"""Every speed benchmark in one table: figure, its baseline measured in the
same run, the ratio, the target and whether it is met.

Each benchmark runs as its own process (``python bench/NAME.py ARGS``); the
figures are read from the lines it prints (``bench/analyze_cache.py`` prints
JSON rows with ``--json``). A benchmark that fails, runs past its time or
prints no figure is a row that says so, never a missing row. ``--quick``
runs each on a small corpus (the whole table in about five minutes on two
cores; the figures are then of the small corpora, named in each row), the
default on the corpora the README's Performance section names.

    .venv/bin/python bench/summary.py [--quick] [--only ingest,siblings] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NUM = r"([0-9][0-9,]*\.?[0-9]*)"


@dataclass
class Figure:
    """One row read from a benchmark's output: ``pattern``'s groups are named
    ``measured``, ``baseline`` and ``ratio`` (any may be absent); ``met`` judges
    the match (None: the figure has no target)."""

    figure: str
    pattern: str
    baseline: str
    target: str = ""
    met: Callable[[dict[str, float]], bool] | None = None
    unit: str = "s"
    sized: bool = False
    """The target is a time on the full corpus: not judged with ``--quick``."""


@dataclass
class Bench:
    name: str
    full: list[str]
    quick: list[str] | None
    """Its arguments with ``--quick`` (None: not run then, too long)."""
    figures: list[Figure] = field(default_factory=list)
    timeout_quick: float = 120
    json_rows: bool = False  # prints its rows as JSON with --json


def n(text: str) -> str:
    return NUM.replace("(", f"(?P<{text}>", 1)


BENCHES = [
    Bench(
        "ingest",
        [],
        ["--runs", "10", "--steps", "4000", "--repeats", "3", "--small-runs", "500"],
        [
            Figure(
                "first ingest, JSONL",
                rf"read_json -> table:\s+{n('baseline')} s[\s\S]*?tunescope full ingest:\s+"
                rf"{n('measured')} s[\s\S]*?ratio to DuckDB read_json:\s+{n('ratio')}x",
                "DuckDB read_json into a table",
                ">= 0.8x",
                lambda g: g["ratio"] >= 0.8,
            ),
            Figure(
                "re-ingest of the unchanged corpus",
                rf"re-ingest, nothing changed:\s+{n('measured')} s\s+= {n('percent')}% of full",
                "the first ingest",
                "< 5%",
                lambda g: g["percent"] < 5,
            ),
            Figure(
                "first ingest, many small files",
                rf"small-file rows/s / large-file rows/s: {n('ratio')}x",
                "a fifth as many files holding as many rows",
                ">= 0.9x",
                lambda g: g["ratio"] >= 0.9,
            ),
        ],
        timeout_quick=90,
    ),
    Bench(
        "cache_trust",
        [],
        ["--runs", "100", "--passes", "5", "--repeats", "5"],
        [
            Figure(
                "re-ingest with the cache's checks",
                rf"ratio checked/unchecked: {n('ratio')}x best",
                "the same re-ingest without the checks",
            )
        ],
        timeout_quick=60,
    ),
    Bench(
        "analyze_cache",
        [],
        ["--runs", "100", "--repeat", "2"],
        json_rows=True,
        timeout_quick=120,
    ),
    Bench(
        "detectors",
        ["--speed-only"],
        ["--speed-only", "--quick"],
        [
            Figure(
                "every detector over the speed corpus",
                rf"analyze: {n('measured')} s[\s\S]*?baseline \(load steps sorted in SQL \+ one "
                rf"rolling median per run/rank\): {n('baseline')} s; analyze / baseline = "
                rf"{n('ratio')}x",
                "load the steps sorted + one rolling median per run and rank",
                "<= 1.2x",
                lambda g: g["ratio"] <= 1.2,
            )
        ],
        timeout_quick=90,
    ),
    Bench(
        "siblings",
        ["--sizes", "1000"],
        ["--sizes", "100", "--ranks", "2", "--steps", "500", "--repeat", "2"],
        [
            Figure(
                "analyze of a sweep, TS501 and TS502 included",
                rf"analyze {n('measured')}s best[\s\S]*?off {n('baseline')}s best[\s\S]*?ratio "
                rf"{n('ratio')}x best",
                "the same analyze with TS501 and TS502 off",
                "< 5 s (1,000 runs)",
                lambda g: g["measured"] < 5,
                sized=True,
            )
        ],
        timeout_quick=90,
    ),
    Bench(
        "tensorboard",
        [],
        ["--points", "50000"],
        [
            Figure(
                f"TensorBoard, {what} (median of rounds)",
                rf"EventAccumulator \(scalars=0\)\s+best [\d.]+s median {n('baseline')}s[\s\S]*?"
                rf"{re.escape(label)}\s+best [\d.]+s median {n('measured')}s\s+speed-up: "
                rf"[\d.]+x best, {n('ratio')}x median",
                "EventAccumulator(scalars=0), same rounds",
                ">= 10x",
                lambda g: g["ratio"] >= 10,
            )
            for what, label in (
                ("the points", "tunescope read_scalars"),
                ("the reader to Arrow rows", "tunescope reader (Arrow rows)"),
            )
        ],
        timeout_quick=60,
    ),
    Bench(
        "console",
        [],
        ["--mb", "10", "--iters", "20000", "--own-mb", "5", "--repeat", "1"],
        [
            Figure(
                f"console reader, {what}",
                rf"{re.escape(what)}[\s\S]*?regex count\s+{n('baseline')} s[\s\S]*?tunescope "
                rf"read\s+{n('measured')} s[^=]*= {n('ratio')}x the regex scan",
                "a compiled regex count of the record lines",
                ">= 0.5x",
                lambda g: g["ratio"] >= 0.5,
            )
            for what in ("HF console", "Megatron iterations", "home-made loop")
        ],
        timeout_quick=90,
    ),
    Bench(
        "object_store",
        ["--runs", "200", "--repeats", "2"],
        ["--runs", "50", "--repeats", "1"],
        [
            Figure(
                "first ingest from S3 (moto)",
                rf"local folder first ingest:\s+{n('baseline')}s[\s\S]*?s3\s+first ingest:\s+"
                rf"{n('measured')}s[\s\S]*?ratio s3/local throughput: {n('ratio')}x",
                "the same ingest from a folder",
                ">= 0.5x",
                lambda g: g["ratio"] >= 0.5,
            )
        ],
        timeout_quick=90,
    ),
    Bench(
        "scale_out",
        ["--repeats", "5"],
        ["--quick"],
        [
            Figure(
                f"analyze, a {engine} task per group (median)",
                rf"analyze_groups\s+first[^\n]*?median\s+{n('baseline')}s[\s\S]*?\n{engine}\s+"
                rf"first[^\n]*?median\s+{n('measured')}s[^\n]*?{n('ratio')}x median",
                "analyze_groups, a process per group",
            )
            for engine in ("spark", "ray")
        ],
        timeout_quick=240,
    ),
    Bench(
        "watch_latency",
        [],
        ["--trials", "4"],
        [
            Figure(
                "watch: line written to webhook received (median)",
                rf"median {n('measured')}s[\s\S]*?baseline[^:]*: {n('baseline')}s[\s\S]*?"
                rf"median / baseline: {n('ratio')}x",
                "half an interval + one poll's ingest and analysis",
                "median < 0.5 s",
                lambda g: g["measured"] < 0.5,
            )
        ],
        timeout_quick=90,
    ),
    Bench(
        "report",
        [],
        None,
        [
            Figure(
                f"HTML report, {what}",
                rf"{re.escape(what)}: report {n('measured')}s[\s\S]*?baseline analyze --format "
                rf"json {n('baseline')}s[\s\S]*?ratio {n('ratio')}x time",
                "analyze --format json",
                f"< {limit:g} s",
                lambda g, limit=limit: g["measured"] < limit,
                sized=True,
            )
            for what, limit in (
                ("100 runs x 10k steps x 4 ranks", 5),
                ("1 run x 100k steps x 2 ranks", 1),
            )
        ],
    ),
    Bench(
        "tui",
        [],
        ["--runs", "100", "--steps", "20000", "--repeat", "1"],
        [
            Figure(
                "TUI first paint",
                rf"first paint, \d+ runs: \d+ ms wall, {n('measured')} ms CPU[\s\S]*?over 1 run "
                rf"\d+ ms wall, {n('baseline')} ms CPU[\s\S]*?{n('ratio')}x CPU",
                "the same app over 1 run (CPU)",
                "< 1000 ms",
                lambda g: g["measured"] < 1000,
                sized=True,
                unit="ms",
            )
        ],
        timeout_quick=90,
    ),
]


def run_bench(b: Bench, quick: bool) -> tuple[str, str | None, float]:
    """The benchmark's output, an error (or None) and its wall time."""
    args = b.quick if quick and b.quick is not None else b.full
    argv = [sys.executable, str(ROOT / "bench" / f"{b.name}.py"), *args]
    argv += ["--json"] if b.json_rows else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=b.timeout_quick if quick else None,
            cwd=ROOT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return "", f"ran past {b.timeout_quick:.0f}s", time.perf_counter() - started
    wall = time.perf_counter() - started
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return done.stdout, f"exit {done.returncode}: {last[:160]}", wall
    return done.stdout, None, wall


def _num(text: str | None) -> float | None:
    return None if text is None else float(text.replace(",", ""))


def rows_of(b: Bench, out: str, error: str | None, quick: bool) -> list[dict[str, Any]]:
    if error is not None:
        return [{"bench": b.name, "figure": f"bench/{b.name}.py", "error": error}]
    if b.json_rows:
        try:
            return [{"bench": b.name, **r} for r in json.loads(out.strip().splitlines()[-1])]
        except (ValueError, IndexError):
            return [{"bench": b.name, "figure": f"bench/{b.name}.py", "error": "no JSON rows"}]
    rows = []
    for f in b.figures:
        m = re.search(f.pattern, out)
        if m is None:
            rows.append({"bench": b.name, "figure": f.figure, "error": "not in its output"})
            continue
        g = {k: v for k, v in ((k, _num(v)) for k, v in m.groupdict().items()) if v is not None}
        if "percent" in g:
            g["ratio"] = g["percent"] / 100
        scale = 1e-3 if f.unit == "ms" else 1.0
        rows.append(
            {
                "bench": b.name,
                "figure": f.figure,
                "measured_s": g["measured"] * scale if "measured" in g else None,
                "baseline": f.baseline,
                "baseline_s": g["baseline"] * scale if "baseline" in g else None,
                "ratio": g.get("ratio"),
                "target": f"{f.target} (full corpus)" if quick and f.sized else f.target,
                "met": f.met(g) if f.met is not None and not (quick and f.sized) else None,
            }
        )
    return rows


def _s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f} s" if v < 1 else f"{v:.2f} s"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| figure | measured | baseline (same run) | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['figure']} ({r['bench']}) | {r['skipped']} | | | | - |")
            continue
        if "error" in r:
            lines.append(f"| {r['figure']} ({r['bench']}) | {r['error']} | | | | no |")
            continue
        base = r.get("baseline") or "-"
        if r.get("baseline_s") is not None:
            base = f"{base}: {_s(r['baseline_s'])}"
        ratio = f"{r['ratio']:.3g}x" if r.get("ratio") is not None else "-"
        met = {True: "yes", False: "no", None: "-"}[r.get("met")]
        lines.append(
            f"| {r['figure']} ({r['bench']}) | {_s(r.get('measured_s'))} | {base} | {ratio} | "
            f"{r.get('target') or '-'} | {met} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small corpora, about five minutes")
    ap.add_argument("--only", help="comma-separated benchmark names")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for b in BENCHES:
        if only is not None and b.name not in only:
            continue
        if args.quick and b.quick is None:
            rows.append(
                {"bench": b.name, "figure": f"bench/{b.name}.py", "skipped": "full run only"}
            )
            continue
        out, error, wall = run_bench(b, args.quick)
        print(f"bench/{b.name}.py: {wall:.0f}s" + (f" ({error})" if error else ""), file=sys.stderr)
        rows.extend(rows_of(b, out, error, args.quick))
    if args.json:
        print(json.dumps(rows))
        return 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{'quick corpora' if args.quick else 'full corpora'}, {os.cpu_count()} CPUs, load "
        f"{load:.1f}, {time.perf_counter() - started:.0f}s in all"
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
