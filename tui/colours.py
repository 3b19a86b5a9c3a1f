"""Colours the screens and widgets share: a run's status, a finding's severity."""

from __future__ import annotations

STATUS_STYLE = {
    "running": "bold #4ea1ff",
    "completed": "#3ccf91",
    "failed": "bold #ff4d4d",
    "interrupted": "#ffb000",
}
SEVERITY_COLOURS = {"error": "#ff4d4d", "warning": "#ffb000", "info": "#4ea1ff"}
