"""Detection on real public logs: what is read, which labelled faults are found,
which false alarms are raised, per run and per detector.

    python bench/real_logs.py                 # fixtures/real (LABELS.json beside it)
    python bench/real_logs.py DIR             # any folder of run dirs with a LABELS.json
    python bench/real_logs.py --findings      # also print every finding

The labels and their rules are described in ``tunescope/report/scoring.py``. The
figures to report: runs read, faults found at their minimum severity, false
alarms (warnings or errors of detectors labelled quiet, errors on healthy
runs), and the time ``analyze`` took against the time of the ingest it needed
(measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/real_logs.py")
    p.add_argument("root", nargs="?", default=str(REPO / "fixtures" / "real"))
    p.add_argument("--findings", action="store_true", help="print every finding")
    a = p.parse_args(argv)
    from tunescope.detectors.engine import analyze
    from tunescope.ingest.store.database import Store
    from tunescope.report.scoring import judge, run_facts

    root = Path(a.root)
    labels = json.loads((root / "LABELS.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = Store.open(root, Path(tmp) / "cache")
        t1 = time.perf_counter()
        findings = analyze(store)
        t2 = time.perf_counter()
        steps, every, formats = run_facts(store.cursor())
        store.close()
    verdicts = judge(labels, findings, steps, every)
    print(f"Real logs: {root} ({len(verdicts)} labelled run dirs)")
    print("| run dir | format | loss rows | faults found | missed | false alarms |")
    print("|---|---|---|---|---|---|")
    for v in verdicts:
        fmt = ",".join(sorted({formats.get(r) or "?" for r in v.runs})) or "not read"
        print(
            f"| {v.label} | {fmt} | {v.steps} | {len(v.found)} | {len(v.missed)} | "
            f"{len(v.false_alarms)} |"
        )
    for v in verdicts:
        for m in v.missed:
            tag = "missed*  " if m in v.known_misses else "missed   "
            print(f"  {tag}{v.label}: {m}")
        for m in v.false_alarms:
            tag = "false*   " if m in v.known_alarms else "false    "
            print(f"  {tag}{v.label}: {m}")
    read = sum(v.read for v in verdicts)
    n_faults = sum(len(v.found) + len(v.missed) for v in verdicts)
    found = sum(len(v.found) for v in verdicts)
    false = sum(len(v.false_alarms) for v in verdicts)
    per_det: dict[str, list[int]] = {}
    for f in findings:
        c = per_det.setdefault(f.detector, [0, 0, 0])
        c[f.severity.level] += 1
    print(
        f"read {read}/{len(verdicts)} run dirs; faults found {found}/{n_faults}; "
        f"false alarms {false}; as labelled (allowing expect_read, known_miss, "
        f"known_false_alarms: the starred lines) {sum(v.as_labelled for v in verdicts)}/{len(verdicts)}"
    )
    print(
        "findings per detector (info/warning/error): "
        + ", ".join(f"{d} {c[0]}/{c[1]}/{c[2]}" for d, c in sorted(per_det.items()))
    )
    print(
        f"analyze {t2 - t1:.2f}s after an ingest of {t1 - t0:.2f}s "
        f"({(t2 - t1) / max(t1 - t0, 1e-9):.2f}x the ingest)"
    )
    if a.findings:
        for f in findings:
            print(
                f"  {f.run} {f.detector} {f.severity.value} {f.step_start}-{f.step_end}: {f.message}"
            )
    return 0 if read == len(verdicts) and found == n_faults and not false else 1


if __name__ == "__main__":
    sys.exit(main())
