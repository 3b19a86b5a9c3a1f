"""Learn from the peers, measured: the published rules of the tools people use
instead of tunescope, replayed on the same labelled logs, against tunescope's
own findings.

    python bench/peers.py              # fixtures/real, and shared/real-logs when present
    python bench/peers.py DIR [DIR..]  # any folders of run dirs with a LABELS.json
    python bench/peers.py --alerts     # also print every peer alert

The peers and where their rules were read are in ``bench/peers_rules.py``:
Lightning's ``SpikeDetection`` callback, trainscope's CUSUM, trainsight's loss,
AMP and gradient rules, and gradscope's gradient alert rules. All four were
found; the rules a log cannot feed (per-layer gradients, AMP overflow flags)
are left out, as that module says.

Each run's ``steps`` view gives the loss and the grad norm (the lowest rank that
logged a loss), the ``metrics`` view the eval loss (``eval_loss``, else the first
``eval_*loss``); every peer rule is replayed over them. A peer catches a labelled
fault (``LABELS.json``: detector, first_step..last_step) when one of its rules
that speaks of that kind of fault (``KIND`` in the rules module) raises an alert
inside the fault's steps, allowing one logging interval either side, as
``tunescope/report/scoring.py`` allows tunescope. Whether tunescope found the fault is
``scoring.judge``'s verdict on ``analyze`` over the same store.

A peer's false-alarm rate is the fraction of healthy run dirs where it raises any
alert outside labelled fault steps (tunescope: a warning or an error), and, per
rule, the fraction of run dirs without a fault of its kind where it fires. A
run dir counts once even when it holds several runs; one with no loss read is
named and left out; a label already read from an earlier folder is not read
again. Then the lists: faults a peer catches and tunescope misses, faults both
catch where a peer's alert comes at an earlier step, and how many of
tunescope's catches each peer misses. Exits 0: the figures are the output.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# bench/ goes last on the path: first, its tensorboard.py would hide the package
sys.path.append(str(Path(__file__).resolve().parent))

from peers_rules import KIND, PEERS, RULES, Alert, replay

REPO = Path(__file__).resolve().parent.parent


def shared_logs() -> Path | None:
    """The larger labelled set of real logs, ``shared/real-logs`` in a folder
    above the checkout, when there is one (it is read, never written)."""
    for up in REPO.parents:
        if (up / "shared" / "real-logs" / "LABELS.json").is_file():
            return up / "shared" / "real-logs"
    return None


@dataclass
class Series:
    """One run's logged series, in step order."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    grad_steps: list[int] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    evals: list[float | None] = field(default_factory=list)


@dataclass
class Fault:
    """One labelled fault, what tunescope made of it, and which peers caught it."""

    label: str
    detector: str
    first: int
    last: int
    slack: int
    tunescope: bool = False
    tunescope_step: int | None = None
    """The first step of tunescope's findings of the fault's detector that overlap it."""
    caught: dict[str, int] = field(default_factory=dict)
    """peer -> the step of its first alert of a matching rule inside the fault."""
    in_range: dict[str, int] = field(default_factory=dict)
    """peer -> the step of its first alert of any rule inside the fault."""

    @property
    def name(self) -> str:
        return f"{self.detector}@{self.first}-{self.last}"

    def covers(self, step: int) -> bool:
        return self.first - self.slack <= step <= self.last + self.slack


@dataclass
class Label:
    """One labelled run dir: its faults, every peer's alerts, tunescope's warnings."""

    key: str
    healthy: bool
    faults: list[Fault]
    alerts: list[Alert] = field(default_factory=list)
    tunescope_alarms: list[tuple[str, int | None]] = field(default_factory=list)
    """(detector, step) of each warning or error of tunescope outside the faults."""
    runs: int = 0
    """Runs read with a loss: a run dir with none is left out of every rate."""

    def inside(self, step: int | None) -> bool:
        return step is not None and any(f.covers(step) for f in self.faults)


def _series(cur: Any) -> dict[str, Series]:
    """Every run's loss, grad norm and eval loss, from the store's views."""
    out: dict[str, Series] = {}
    rows = cur.execute(
        "WITH r AS (SELECT run_id, min(rank) AS rank FROM steps WHERE loss IS NOT NULL "
        "GROUP BY run_id) "
        "SELECT s.run_id, s.step, s.loss, s.grad_norm FROM steps s JOIN r USING (run_id, rank) "
        "ORDER BY s.run_id, s.step"
    ).fetchall()
    for run, step, loss, gn in rows:
        s = out.setdefault(run, Series())
        if loss is not None:
            s.steps.append(int(step))
            s.losses.append(float(loss))
        if gn is not None:
            s.grad_steps.append(int(step))
            s.grad_norms.append(float(gn))
    evals = cur.execute(
        "WITH e AS (SELECT run_id, step, name, value FROM metrics "
        "WHERE name = 'eval_loss' OR (name LIKE 'eval%' AND name LIKE '%loss')), "
        "pick AS (SELECT run_id, arg_min(name, (name <> 'eval_loss', name)) AS name FROM e "
        "GROUP BY run_id) "
        "SELECT run_id, step, avg(value) FROM e JOIN pick USING (run_id, name) "
        "GROUP BY run_id, step ORDER BY run_id, step"
    ).fetchall()
    by_run: dict[str, list[tuple[int, float]]] = {}
    for run, step, value in evals:
        by_run.setdefault(run, []).append((int(step), float(value)))
    for run, s in out.items():
        s.evals = _align(s.steps, by_run.get(run, []))
    return out


def _align(steps: list[int], evals: list[tuple[int, float]]) -> list[float | None]:
    """Each eval handed in with the first train point at or after its step (the
    latest when several fall before one point), as a training loop would."""
    out: list[float | None] = [None] * len(steps)
    j = 0
    for i, step in enumerate(steps):
        value = None
        while j < len(evals) and evals[j][0] <= step:
            value = evals[j][1]
            j += 1
        out[i] = value
    return out


class BadLabels(ValueError):
    """A LABELS.json that cannot be judged against: the message names the file."""


def load_labels(path: Path) -> dict[str, Any]:
    """The labelled run dirs of a LABELS.json, each fault checked for the fields
    the replay needs (detector, first_step, last_step)."""
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise BadLabels(f"{path}: cannot read it ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" (line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
        raise BadLabels(f"{path}{where}: not JSON; fix or remove the file") from None
    runs = doc.get("runs") if isinstance(doc, dict) else None
    if not isinstance(runs, dict):
        raise BadLabels(f'{path}: no "runs" object of labelled run dirs')
    for key, lab in runs.items():
        faults = lab.get("faults", []) if isinstance(lab, dict) else None
        if not isinstance(faults, list):
            raise BadLabels(f'{path}: run dir "{key}" is not an object with a "faults" list')
        for fl in faults:
            try:
                int(fl["first_step"]), int(fl["last_step"]), str(fl["detector"])
            except (KeyError, TypeError, ValueError):
                raise BadLabels(
                    f'{path}: a fault of "{key}" lacks a detector, a first_step or a last_step'
                ) from None
    return doc


def read_root(
    root: Path, tmp: Path, skip: set[str], seconds: dict[str, float] | None = None
) -> list[Label]:
    """Ingest one labelled folder, analyze it, replay every peer on every run;
    ``seconds`` adds up the time of ``analyze`` and of the replays."""
    from tunescope.detectors.engine import analyze
    from tunescope.findings import Severity
    from tunescope.ingest.store.database import Store
    from tunescope.report.scoring import judge, label_of, run_facts

    labels = load_labels(root / "LABELS.json")
    store = Store.open(root, tmp / f"cache-{len(skip)}")
    took = seconds if seconds is not None else {}
    try:
        t0 = time.perf_counter()
        findings = analyze(store)
        took["analyze"] = took.get("analyze", 0.0) + time.perf_counter() - t0
        cur = store.cursor()
        series = _series(cur)
        counts, every, _ = run_facts(cur)
    finally:
        store.close()
    verdicts = {v.label: v for v in judge(labels, findings, counts, every)}
    out = []
    for key, lab in sorted(labels.get("runs", {}).items()):
        if key in skip:
            continue
        runs = [r for r in series if label_of(r) == key and series[r].steps]
        slack = max([int(every.get(r, 1) or 1) for r in runs] or [1])
        found = verdicts[key].found if key in verdicts else []
        faults = []
        for fl in lab.get("faults", []):
            f = Fault(key, fl["detector"], int(fl["first_step"]), int(fl["last_step"]), slack)
            need = fl.get("min_severity", "warning")
            f.tunescope = any(x.startswith(f"{f.name} (>= {need})") for x in found)
            steps = [
                fd.step_start if fd.step_start is not None else f.first
                for fd in findings
                if label_of(fd.run) == key
                and fd.detector == f.detector
                and fd.severity.level >= Severity(need).level
                and (fd.step_start is None or fd.step_start <= f.last + slack)
                and (fd.step_end is None or fd.step_end >= f.first - slack)
            ]
            f.tunescope_step = min(steps) if f.tunescope and steps else None
            faults.append(f)
        label = Label(key, bool(lab.get("healthy")), faults, runs=len(runs))
        t0 = time.perf_counter()
        for r in runs:
            s = series[r]
            label.alerts.extend(replay(s.steps, s.losses, s.grad_steps, s.grad_norms, s.evals))
        took["replay"] = took.get("replay", 0.0) + time.perf_counter() - t0
        for fd in findings:
            if (
                label_of(fd.run) == key
                and fd.severity.level >= Severity.WARNING.level
                and not label.inside(fd.step_start)
            ):
                label.tunescope_alarms.append((fd.detector, fd.step_start))
        for f in faults:
            for a in label.alerts:
                if not f.covers(a.step):
                    continue
                f.in_range.setdefault(a.peer, a.step)
                if f.detector in KIND[a.rule]:
                    f.caught.setdefault(a.peer, a.step)
        out.append(label)
    return out


def _rate(n: int, d: int) -> str:
    return f"{n}/{d} ({100.0 * n / d:.0f}%)" if d else "0/0"


def report(every_label: list[Label], alerts: bool = False) -> None:
    """The tables and lists this bench prints."""
    labels = [lab for lab in every_label if lab.runs]
    unread = [lab.key for lab in every_label if not lab.runs]
    faults = [f for lab in labels for f in lab.faults]
    healthy = [lab for lab in labels if lab.healthy]
    print(
        f"{len(labels)} labelled run dirs read ({len(healthy)} healthy), "
        f"{len(faults)} labelled faults"
        + (f"; not read, left out: {', '.join(unread)}" if unread else "")
    )
    print(
        "| peer | faults caught | any alert inside a fault | fires on healthy run dirs | alerts |"
    )
    print("|---|---|---|---|---|")
    ts_fired = sum(1 for lab in healthy if lab.tunescope_alarms)
    ts_caught = sum(f.tunescope for f in faults)
    n_ts = sum(len(lab.tunescope_alarms) for lab in labels)
    print(
        f"| tunescope | {ts_caught}/{len(faults)} | - | {_rate(ts_fired, len(healthy))} | "
        f"{n_ts} warnings or errors outside faults |"
    )
    for peer in PEERS:
        caught = sum(peer in f.caught for f in faults)
        near = sum(peer in f.in_range for f in faults)
        fired = sum(1 for lab in healthy if _outside(lab, peer))
        n = sum(1 for lab in labels for a in lab.alerts if a.peer == peer)
        print(
            f"| {peer} | {caught}/{len(faults)} | {near}/{len(faults)} | "
            f"{_rate(fired, len(healthy))} | {n} |"
        )
    print()
    print("| peer rule | speaks of | faults of its kinds caught | fires on run dirs without them |")
    print("|---|---|---|---|")
    by_key = {lab.key: lab.alerts for lab in labels}
    for peer, rule in RULES:
        kinds = KIND[rule]
        mine = [f for f in faults if f.detector in kinds]
        caught = sum(
            any(a.peer == peer and a.rule == rule and f.covers(a.step) for a in by_key[f.label])
            for f in mine
        )
        without = [lab for lab in labels if not any(f.detector in kinds for f in lab.faults)]
        fired = sum(
            1 for lab in without if any(a.peer == peer and a.rule == rule for a in lab.alerts)
        )
        print(
            f"| {peer} {rule} | {', '.join(kinds) or 'no fault kind'} | "
            f"{caught}/{len(mine)} | {_rate(fired, len(without))} |"
        )
    print()
    gained = [(f, p, s) for f in faults if not f.tunescope for p, s in sorted(f.caught.items())]
    print("caught by a peer, missed by tunescope:")
    for f, peer, step in gained:
        print(f"  {f.label}  {f.name}  {peer}  step {step}")
    if not gained:
        print("  none")
    ts = [f for f in faults if f.tunescope]
    first = [
        (f, p, s)
        for f in ts
        for p, s in sorted(f.caught.items())
        if f.tunescope_step is not None and s < f.tunescope_step
    ]
    print("caught by both, by a peer at an earlier step:")
    for f, peer, step in first:
        print(f"  {f.label}  {f.name}  {peer}  step {step} (tunescope: step {f.tunescope_step})")
    if not first:
        print("  none")
    print(
        f"caught by tunescope, missed by every peer: {sum(not f.caught for f in ts)}/{len(ts)}; "
        + ", ".join(f"missed by {p}: {sum(p not in f.caught for f in ts)}" for p in PEERS)
    )
    missed_all = [f for f in faults if not f.tunescope and not f.caught]
    if missed_all:
        print(
            "missed by tunescope and by every peer: "
            + ", ".join(f"{f.label} {f.name}" for f in missed_all)
        )
    if alerts:
        for lab in labels:
            for a in lab.alerts:
                where = " (inside a fault)" if lab.inside(a.step) else ""
                print(f"  {lab.key} {a.peer} {a.rule} step {a.step} value {a.value:.4g}{where}")


def _show(root: Path) -> str:
    """A folder relative to the checkout, or to the folder that holds
    ``shared/`` (``shared/real-logs``); else as given."""
    shared = shared_logs()
    for up in [REPO, *([shared.parent.parent] if shared else [])]:
        try:
            return str(root.resolve().relative_to(up))
        except ValueError:
            continue
    return str(root)


def _outside(lab: Label, peer: str) -> bool:
    return any(a.peer == peer and not lab.inside(a.step) for a in lab.alerts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/peers.py")
    p.add_argument("roots", nargs="*", help="folders of run dirs with a LABELS.json")
    p.add_argument("--alerts", action="store_true", help="print every peer alert")
    a = p.parse_args(argv)
    shared = shared_logs()
    roots = [Path(r) for r in a.roots] or [
        REPO / "fixtures" / "real",
        *([shared] if shared else []),
    ]
    from tunescope.errors import TunescopeError

    labels: list[Label] = []
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for root in roots:
            if not (root / "LABELS.json").is_file():
                print(f"peers: {root}: no LABELS.json here; skipped", file=sys.stderr)
                continue
            try:
                new = read_root(root, Path(tmp), {lab.key for lab in labels}, seconds)
            except (BadLabels, TunescopeError) as e:
                print(f"peers: {e}", file=sys.stderr)
                continue
            print(f"Peers on {_show(root)}: {len(new)} new labelled run dirs")
            labels.extend(new)
    if not labels:
        print("peers: no labelled run dirs read", file=sys.stderr)
        return 0
    report(labels, a.alerts)
    an, rp = seconds.get("analyze", 0.0), seconds.get("replay", 0.0)
    print(
        f"replaying every peer took {rp:.2f}s, {rp / max(an, 1e-9):.2f}x the {an:.2f}s of "
        "tunescope's analyze over the same stores (measured in this run)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
