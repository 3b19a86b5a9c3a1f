"""The findings model shared by detectors, reports, the TUI and alerts."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
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
        d = asdict(self)
        d["severity"] = self.severity.value
        d["evidence"] = jsonable(self.evidence)
        return d

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


def findings_json(findings: list[Finding]) -> str:
    return json.dumps([f.to_dict() for f in findings], indent=2)


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
