"""The findings model shared by detectors, reports, the TUI and alerts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Severity(str, Enum):
    """How bad a finding is. Ordered: info < warning < error."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def level(self) -> int:
        return _LEVELS[self]

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls(text.lower())
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown severity {text!r}; use one of {names}") from None


_LEVELS = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}


@dataclass
class Finding:
    """One incident found in one run (and rank, or all ranks when ``rank`` is None).

    ``message`` says what happened with numbers; ``suggestion`` says what to do.
    ``evidence`` holds the numbers that triggered it (JSON-serialisable).
    """

    run: str
    detector: str
    name: str
    severity: Severity
    step_start: int | None
    step_end: int | None
    message: str
    suggestion: str
    rank: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The finding as JSON-safe data: the shape of the JSON report's
        findings, of alerts and of their outbox (:meth:`from_dict` reads it)."""
        return {
            "run": self.run,
            "rank": self.rank,
            "detector": self.detector,
            "name": self.name,
            "severity": self.severity.value,
            "step_start": self.step_start,
            "step_end": self.step_end,
            "message": self.message,
            "suggestion": self.suggestion,
            "evidence": jsonable(self.evidence),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        """A finding from :meth:`to_dict`'s data; only ``run`` and ``detector``
        are required (an older journal may lack the rest)."""
        return cls(
            run=d["run"],
            detector=d["detector"],
            name=d.get("name") or d["detector"],
            severity=Severity.parse(d.get("severity") or "warning"),
            step_start=d.get("step_start"),
            step_end=d.get("step_end"),
            message=d.get("message") or "",
            suggestion=d.get("suggestion") or "",
            rank=d.get("rank"),
            evidence=d.get("evidence") or {},
        )

    @property
    def key(self) -> tuple[str, int | None, str, int | None]:
        """Identity of the incident: run, rank, detector and where it started."""
        return (self.run, self.rank, self.detector, self.step_start)


def jsonable(value: Any) -> Any:
    """Make evidence JSON-safe: numpy scalars to Python, NaN/Inf to strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def step_range(finding: Finding | dict[str, Any], none: str = "") -> str:
    """``step 120`` or ``steps 120-131`` for a finding (or its dict, as in JSON
    or a ``findings`` row); ``none`` when it has no step (a whole-run finding)."""
    if isinstance(finding, dict):
        start, end = finding.get("step_start"), finding.get("step_end")
    else:
        start, end = finding.step_start, finding.step_end
    if start is None:
        return none
    if end is None or end == start:
        return f"step {start}"
    return f"steps {start}-{end}"


def where(finding: Finding) -> str:
    """Where a finding is, as the reports write it: ``steps 120-131, rank 3``
    or ``whole run, all ranks``."""
    rank = "all ranks" if finding.rank is None else f"rank {finding.rank}"
    return f"{step_range(finding, 'whole run')}, {rank}"


SIBLING_DETECTOR = "TS501"  # judges a run against its siblings' group


def sibling_findings(
    runs: list[dict[str, Any]], findings: list[Finding]
) -> list[tuple[str, list[str], list[Finding]]]:
    """(group, its runs, its TS501 findings) for the runs that have siblings
    (the ``group`` of their summaries), for the Markdown and HTML reports."""
    groups: dict[str, list[str]] = {}
    for r in runs:
        if r.get("group"):
            groups.setdefault(r["group"], []).append(r["run"])
    return [
        (
            name,
            members,
            [f for f in findings if f.detector == SIBLING_DETECTOR and f.run in members],
        )
        for name, members in groups.items()
    ]


DEATH_DETECTOR = "TS601"  # names why a crashed run died (evidence "label")


def death_cause(findings: list[Finding], run: str | None = None) -> str | None:
    """The cause TS601 named for a run's death (``CUDA out of memory``), or
    None; ``run`` picks one run out of a list of several runs' findings."""
    for f in findings:
        if f.detector == DEATH_DETECTOR and (run is None or f.run == run):
            label = f.evidence.get("label")
            return str(label) if label else None
    return None


def status_text(status: str | None, cause: str | None) -> str:
    """A run's status for people, with the cause of its death when one is
    known: ``failed (CUDA out of memory)``."""
    shown = status or "unknown"
    return f"{shown} ({cause})" if cause else shown
