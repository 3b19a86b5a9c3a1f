"""Findings kept by a content key: ``tunescope analyze`` again over an
unchanged corpus, and over the corpus with one run grown, against the first
analysis of the same corpus, measured in the same run.

The corpus: ``--runs`` runs (default 300) of ``--ranks`` x ``--steps`` (2 x
1,000), the sweep of ``bench/siblings.py`` (one sibling group, so TS501 and
TS502 judge every run). Each repeat: a fresh copy of the corpus is ingested
(not timed), then in this process ``analyze`` (the text report) three times: the
first analysis (no kept findings), the same command again (unchanged), and
after appending 50 steps to one rank of one run (the ingest of those lines is
in the figure). The reports are checked: the unchanged one equals the first,
the grown one a cold analysis of the grown corpus. Target: unchanged < 5% of
the first (given against the first analyze of the ingested corpus, and of
the logs with their first ingest).

    .venv/bin/python bench/analyze_cache.py [--runs 300] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "bench"))  # last: bench/tensorboard.py must not hide the package

from siblings import make_sweep  # noqa: E402

from tunescope.cli import main as main_cli  # noqa: E402
from tunescope.ingest.store.database import Store  # noqa: E402

TARGET = 0.05


def analyze(root: Path, out: Path) -> tuple[float, str]:
    """``tunescope analyze ROOT`` (the text report, as a CI gate runs it): its
    time and its report."""
    argv = ["analyze", str(root), "-o", str(out), "--exit-zero"]
    with contextlib.redirect_stderr(io.StringIO()):
        t = time.perf_counter()
        code = main_cli(argv)
        t = time.perf_counter() - t
    assert code == 0, f"{argv}: exit {code}"
    return t, out.read_text()


def grow(root: Path) -> None:
    """50 more steps on rank 0 of the first run (a run still training)."""
    path = sorted(root.glob("run-*"))[0] / "events" / "rank-0.jsonl"
    lines = path.read_bytes().splitlines()
    last = json.loads(next(x for x in reversed(lines) if b'"step"' in x and b'"loss"' in x))
    with open(path, "a") as f:
        for i in range(1, 51):
            step = {**last, "step": last["step"] + i, "ts": last["ts"] + i}
            f.write(json.dumps(step) + "\n")


def measure(runs: int, ranks: int, steps: int, repeat: int, base: Path) -> list[dict[str, Any]]:
    pool = base / f"pool-{ranks}x{steps}"
    first, same, grown, scratch = [], [], [], []
    tmp = Path(tempfile.mkdtemp(prefix="tunescope-bench-memo-"))
    try:
        for i in range(repeat):
            root = tmp / f"corpus-{i}"
            make_sweep(pool, root, runs, ranks, steps)
            for rank_file in root.glob("*/events/rank-0.jsonl"):  # grown in place: not a link
                data = rank_file.read_bytes()
                rank_file.unlink()
                rank_file.write_bytes(data)
            with contextlib.redirect_stderr(io.StringIO()):
                t_ingest = time.perf_counter()
                Store.open(root).close()
                t_ingest = time.perf_counter() - t_ingest
            t, cold = analyze(root, tmp / "a.txt")
            first.append(t)
            scratch.append(t + t_ingest)
            t, again = analyze(root, tmp / "b.txt")
            same.append(t)
            assert again == cold, "an unchanged corpus analysed again: another report"
            grow(root)
            t, after = analyze(root, tmp / "c.txt")
            grown.append(t)
            (root / ".tunescope" / "findings-memo.parquet").unlink()
            _, fresh = analyze(root, tmp / "d.txt")
            assert after == fresh, "one run grown: another report than a cold analysis"
            shutil.rmtree(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    what = f"{runs} runs x {ranks} ranks x {steps} steps"
    rows = []
    for label, times, base, of in (
        ("unchanged", same, first, "the first analyze of the ingested corpus"),
        ("unchanged", same, scratch, "the first analyze of the logs, ingest included"),
        ("one run grown", grown, first, "the first analyze of the ingested corpus"),
    ):
        best = min(times) / min(base)
        med = statistics.median(t / f for t, f in zip(times, base, strict=True))
        rows.append(
            {
                "figure": f"analyze again, {label} ({what})",
                "measured_s": min(times),
                "baseline": of,
                "baseline_s": min(base),
                "ratio": best,
                "median_ratio": med,
                "target": f"< {TARGET:.0%}" if label == "unchanged" else "",
                "met": best < TARGET if label == "unchanged" else None,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, help="where the generated runs are kept")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    base = args.dir or Path(tempfile.gettempdir()) / "tunescope-bench-memo"
    rows = measure(args.runs, args.ranks, args.steps, args.repeat, base)
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        print(
            f"{r['figure']}: {r['measured_s']:.2f}s best against {r['baseline_s']:.2f}s "
            f"({r['baseline']}): {r['ratio']:.3f}x best, {r['median_ratio']:.3f}x median"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
