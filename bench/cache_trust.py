"""What checking an untrusted cache costs a poll, measured against the same
poll without the checks in the same run.

    python bench/cache_trust.py [--runs 400] [--passes 20] [--repeats 15]

Writes ``--runs`` small runs (cached in bench/out/ between runs), ingests them
in ``--passes`` passes (so the cache holds many segments and a long
manifest), then times a re-ingest of the unchanged corpus (what ``watch``
and the TUI do every poll) with the manifest's checks and the segments'
footer checks (ingest/store/trust.py, segments.unreadable), and with both replaced
by no-ops, interleaved ``--repeats`` times; prints best and median of each
and their ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from tunescope.ingest.store import manifest as manifests
from tunescope.ingest.store import segments
from tunescope.ingest.store.cache import Cache
from tunescope.train.events import EventWriter

OUT = Path(__file__).resolve().parent / "out" / "cache_trust"


def make_corpus(root: Path, runs: int, passes: int) -> None:
    shutil.rmtree(root, ignore_errors=True)
    per_pass = max(1, runs // passes)
    for r in range(runs):
        with EventWriter(root / f"run-{r:04d}") as w:
            w.run_start(model="tiny", total_steps=50)
            for s in range(1, 51):
                w.step(step=s, loss=1.0 / s, lr=1e-4, grad_norm=1.0)
        if (r + 1) % per_pass == 0:
            Cache(root).ingest()  # one pass: new segments
    Cache(root).ingest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    root = OUT / "runs"
    make_corpus(root, args.runs, args.passes)
    cache = Cache(root)
    m = cache.load_manifest()
    print(
        f"corpus: {len(m['sources'])} sources, {len(m['segments'])} segments, "
        f"manifest {cache.manifest_path.stat().st_size / 1e3:.0f} kB"
    )
    fault, unreadable = manifests.manifest_fault, segments.unreadable
    times: dict[str, list[float]] = {"checked": [], "unchecked": []}
    for _ in range(args.repeats):
        for mode in ("checked", "unchecked"):
            if mode == "unchecked":
                manifests.manifest_fault = lambda *a: None  # type: ignore[assignment]
                segments.unreadable = lambda *a: None  # type: ignore[assignment]
            started = time.perf_counter()
            report = cache.ingest()
            times[mode].append(time.perf_counter() - started)
            manifests.manifest_fault, segments.unreadable = fault, unreadable
            assert report.changed == 0
    for mode, ts in times.items():
        print(
            f"  re-ingest, {mode:9s}: best {min(ts) * 1e3:7.1f} ms, median {statistics.median(ts) * 1e3:7.1f} ms"
        )
    best = min(times["checked"]) / min(times["unchecked"])
    med = statistics.median(times["checked"]) / statistics.median(times["unchecked"])
    print(f"  ratio checked/unchecked: {best:.2f}x best, {med:.2f}x median")
    # the checks alone, on the same manifest
    alone = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        fault(m, cache.segments_dir)
        unreadable(m, cache.segments_dir)
        alone.append(time.perf_counter() - started)
    share = min(alone) / min(times["unchecked"])
    print(
        f"  the checks alone: best {min(alone) * 1e3:.2f} ms, "
        f"{share * 100:.1f}% of the best unchecked re-ingest"
    )


if __name__ == "__main__":
    main()
