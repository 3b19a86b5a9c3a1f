"""Judging findings against a labelled corpus (a ``LABELS.json`` beside the runs).

The labels say, per run directory, which faults must be found and which
detectors must stay quiet::

    {"runs": {"some-run": {
        "healthy": false,
        "faults": [{"detector": "TS105", "first_step": 22, "last_step": 22,
                    "min_severity": "info", "note": "..."}],
        "quiet": ["TS001", "TS102"]}}}

- a fault is found when a finding of its detector, at ``min_severity`` or
  above (default ``warning``), overlaps ``first_step..last_step``, allowing one
  logging interval either side; a finding of a detector whose ``SUPERSEDES``
  names the labelled one counts too: the engine keeps one finding per incident
  (a spike that never came back is reported as TS102's divergence, not also as
  TS101's spike), and that finding is the fault's report;
- a quiet detector raises nothing at warning or above outside the faults' steps;
- a healthy run has no error at all (``tunescope analyze`` exits 0 on it);
- every labelled run directory is read: it holds at least one run with a loss
  (training loss rows, or an evaluation's loss where the log prints only that:
  :data:`LOSS_POINTS`), unless it says ``"expect_read": false`` (today's readers cannot read it, or
  the file holds no loss at all: ``"has_loss": false``); such a run must then be
  unread, so the flag is flipped when a reader learns the format;
- a fault labelled ``"known_miss": "why"`` is found by no detector today: a
  miss is still reported, in ``missed`` and in ``known_misses``, and a test may
  allow it; finding it is reported in ``unexpected_finds`` so the key is removed;
- ``"known_false_alarms": ["TS101", ...]`` names quiet detectors known to raise
  a warning on the run today: their alarms are reported in ``false_alarms`` and
  in ``known_alarms``.

Other keys describe the log and are not judged here: ``has_loss``, ``shape``
(``hf_state``, ``megatron``, ``block_records``...), ``trainer``, and for a run
that died ``death`` (``{"cause": "cuda_oom" | "nccl_timeout" | ..., "step": N,
"line": "..."}``), judged through its ``TS601`` fault like any other.

A run id belongs to the label of its first path component, so a run directory
that holds several runs (``runs/<date>/``, ``train.log#2``) is judged as one.
``bench/real_logs.py`` prints the verdicts; a test holds ``fixtures/real/`` to them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tunescope.findings import Finding, Severity

# Loss points per run: training loss rows, and the evaluation's loss points
# (a log may print only those), with each run's format.
LOSS_POINTS = (
    "SELECT r.run_id, "
    "(SELECT count(s.loss) FROM steps s WHERE s.run_id = r.run_id) "
    "+ (SELECT count(m.value) FROM metrics m WHERE m.run_id = r.run_id AND m.name = 'eval_loss'), "
    "r.format FROM runs r"
)


@dataclass
class RunVerdict:
    """How one labelled run directory fared."""

    label: str
    runs: list[str] = field(default_factory=list)
    steps: int = 0
    found: list[str] = field(default_factory=list)
    """Labelled faults found: ``"TS105@22 (info)"``."""
    missed: list[str] = field(default_factory=list)
    """Labelled faults not found at their minimum severity."""
    false_alarms: list[str] = field(default_factory=list)
    """Warnings or errors of quiet detectors, and errors on healthy runs."""
    expect_read: bool = True
    """False where the labels say today's readers cannot read the run."""
    known_misses: list[str] = field(default_factory=list)
    """The misses whose fault is labelled ``known_miss`` (also in ``missed``)."""
    unexpected_finds: list[str] = field(default_factory=list)
    """Faults labelled ``known_miss`` that were found after all."""
    known_alarms: list[str] = field(default_factory=list)
    """The false alarms of detectors labelled ``known_false_alarms`` (also in ``false_alarms``)."""

    @property
    def read(self) -> bool:
        return self.steps > 0

    @property
    def ok(self) -> bool:
        return self.read and not self.missed and not self.false_alarms

    @property
    def as_labelled(self) -> bool:
        """Holds to its labels, allowing what they mark as known today."""
        return (
            self.read == self.expect_read
            and set(self.missed) <= set(self.known_misses)
            and not self.unexpected_finds
            and set(self.false_alarms) <= set(self.known_alarms)
        )


def run_facts(cur: Any) -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
    """What ``judge`` needs of a store, from a cursor over its views: per run,
    its loss points (:data:`LOSS_POINTS`), the logging interval its ``run_start`` names (1 when
    it names none), and its format."""
    rows = cur.execute(LOSS_POINTS).fetchall()
    every = {
        run: json.loads(p).get("logging_steps") or 1
        for run, p in cur.execute(
            "SELECT run_id, payload::VARCHAR FROM events WHERE kind = 'run_start'"
        ).fetchall()
    }
    return {r: int(n) for r, n, _ in rows}, every, {r: f for r, _, f in rows}


def label_of(run_id: str) -> str:
    """The label key of a run: the first component of its id."""
    return run_id.split("/", 1)[0].split("#", 1)[0]


def covering() -> dict[str, set[str]]:
    """Per detector id, the detectors whose findings the engine keeps in its
    place for one incident (the registry's ``SUPERSEDES``, read the other way)."""
    from tunescope.detectors.registry import DETECTORS

    out: dict[str, set[str]] = {}
    for d in DETECTORS:
        for covered in getattr(d, "SUPERSEDES", ()):
            out.setdefault(covered, set()).add(d.ID)
    return out


def _overlaps(f: Finding, first: int, last: int, slack: int) -> bool:
    a = f.step_start if f.step_start is not None else first
    b = f.step_end if f.step_end is not None else a
    return a <= last + slack and b >= first - slack


def judge(
    labels: Mapping[str, Any],
    findings: Iterable[Finding],
    steps: Mapping[str, int],
    logging_steps: Mapping[str, int] | None = None,
) -> list[RunVerdict]:
    """One verdict per labelled run directory. ``steps``: loss rows per run id;
    ``logging_steps``: the logging interval per run id (the overlap slack)."""
    by_label: dict[str, list[Finding]] = {}
    for f in findings:
        by_label.setdefault(label_of(f.run), []).append(f)
    runs_of: dict[str, list[str]] = {}
    for run in steps:
        runs_of.setdefault(label_of(run), []).append(run)
    covers = covering()
    out = []
    for key, lab in sorted(labels.get("runs", {}).items()):
        v = RunVerdict(key, sorted(runs_of.get(key, [])), expect_read=lab.get("expect_read", True))
        v.steps = sum(int(steps.get(r, 0) or 0) for r in v.runs)
        mine = by_label.get(key, [])
        slack = max([int((logging_steps or {}).get(r, 1) or 1) for r in v.runs] or [1])
        fault_spans = []
        for fl in lab.get("faults", []):
            first, last = int(fl["first_step"]), int(fl["last_step"])
            fault_spans.append((first, last))
            need = Severity(fl.get("min_severity", "warning"))
            reporters = {fl["detector"], *covers.get(fl["detector"], ())}
            hits = [
                f
                for f in mine
                if f.detector in reporters
                and f.severity.level >= need.level
                and _overlaps(f, first, last, slack)
            ]
            name = f"{fl['detector']}@{first}-{last} (>= {need.value})"
            if hits:
                best = max(hits, key=lambda f: (f.detector == fl["detector"], f.severity.level))
                by = "" if best.detector == fl["detector"] else f" (as {best.detector})"
                v.found.append(f"{name}: {best.severity.value} at {best.step_start}{by}")
                if fl.get("known_miss"):
                    v.unexpected_finds.append(f"{name}: labelled known_miss ({fl['known_miss']})")
            else:
                near = [f for f in mine if f.detector == fl["detector"]]
                got = ", ".join(f"{f.severity.value} at {f.step_start}" for f in near) or "nothing"
                v.missed.append(f"{name}: got {got}")
                if fl.get("known_miss"):
                    v.known_misses.append(v.missed[-1])
        quiet = set(lab.get("quiet", []))
        known_alarm = set(lab.get("known_false_alarms", []))
        for f in mine:
            if f.severity.level < Severity.WARNING.level:
                continue
            inside = any(_overlaps(f, a, b, slack) for a, b in fault_spans)
            if (f.detector in quiet and not inside) or (
                lab.get("healthy") and f.severity is Severity.ERROR
            ):
                v.false_alarms.append(_describe(f))
                if f.detector in known_alarm:
                    v.known_alarms.append(v.false_alarms[-1])
        out.append(v)
    return out


def _describe(f: Finding) -> str:
    span = "" if f.step_start is None else f" steps {f.step_start}-{f.step_end}"
    return f"{f.detector} {f.severity.value}{span}: {f.message}"
