"""The alert model: one finding to announce, why now, and its run's summary.

What every payload format builds on: :class:`Alert` (with its stable id and
its JSON form for the outbox), the headline and the detail lines that each
chat service shows in its own markup.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from tunescope.findings import Finding, jsonable, step_range
from tunescope.numbers import cell


@dataclass
class Alert:
    """One finding to announce, why now (``new``, ``updated``: the incident grew,
    ``escalated``: its severity rose), a summary of its run, and how many other
    incidents of the same detector and run were folded into it by the rate limit."""

    finding: Finding
    reason: str = "new"
    run: dict[str, Any] = field(default_factory=dict)
    folded: int = 0
    created: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        """Stable per incident and revision: the same alert always has the same id."""
        f = self.finding
        ident = [f.run, f.rank, f.detector, f.step_start, f.step_end, f.severity.value, self.reason]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:24]

    @property
    def event(self) -> str:
        return f"finding.{self.reason}"

    def describe(self) -> str:
        """A short line for logs: ``new TS101 alert for run-a (rank 0, steps 120-131)``."""
        f = self.finding
        where = f.run if f.rank is None else f"{f.run} rank {f.rank}"
        steps = step_range(f)
        return f"{self.reason} {f.severity.value} {f.detector} alert for {where}" + (
            f" ({steps})" if steps else ""
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason,
            "finding": self.finding.to_dict(),
            "run": jsonable(self.run),
            "folded": self.folded,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        finding = Finding.from_dict(dict(d["finding"]))
        return cls(
            finding=finding,
            reason=d.get("reason", "new"),
            run=d.get("run") or {},
            folded=int(d.get("folded", 0)),
            created=float(d.get("created", time.time())),
        )


def escape_markup(text: str) -> str:
    """``&``, ``<`` and ``>`` as entities: text from a log (a run name, a
    message) shown in a chat service's markup cannot open a mention
    (``<!channel>``), a link (``<mailto:...|...>``) or a tag (``<at>``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def headline(alert: Alert) -> str:
    f = alert.finding
    prefix = {"updated": "still firing: ", "escalated": "escalated: "}.get(alert.reason, "")
    where = f"run {f.run}" + ("" if f.rank is None else f" rank {f.rank}")
    return f"[{f.severity.value.upper()}] {prefix}{f.name} in {where}"


def run_line(run: dict[str, Any]) -> str:
    """``running · step 1200/3000 · loss 2.31 · lr 3e-05``, from what the summary holds."""
    parts = []
    if run.get("status"):
        parts.append(str(run["status"]))
    if run.get("last_step") is not None:
        total = run.get("total_steps")
        parts.append(f"step {run['last_step']}" + (f"/{total}" if total else ""))
    for key, label in (("last_loss", "loss"), ("last_lr", "lr")):
        if run.get(key) is not None:
            parts.append(f"{label} {cell(run[key])}")
    if run.get("model"):
        parts.append(str(run["model"]))
    return " · ".join(parts)


def detail_lines(alert: Alert) -> list[str]:
    f = alert.finding
    steps = step_range(f)
    lines = [f"detector {f.detector}" + (f" · {steps}" if steps else "")]
    summary = run_line(alert.run)
    if summary:
        lines.append(f"run: {summary}")
    if alert.folded:
        lines.append(
            f"{alert.folded} more incident(s) of this detector in this run since the last alert"
        )
    if alert.run.get("report_url"):
        lines.append(f"report: {alert.run['report_url']}")
    return lines
