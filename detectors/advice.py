"""Fix suggestions that read the run's own configuration.

A suggestion to "clip gradients at max_norm 1.0" is noise to a run that
already clips at 1.0. :func:`clipping` reads ``max_grad_norm`` from the
``run_start`` event (top level or its ``config``) and says what else to do.
"""

from __future__ import annotations

from typing import Any


def configured(start: dict[str, Any], key: str) -> Any:
    """A setting from ``run_start``: its top level, else its ``config`` table."""
    if key in start:
        return start[key]
    cfg = start.get("config")
    return cfg.get(key) if isinstance(cfg, dict) else None


def clipping(start: dict[str, Any]) -> str:
    """The clipping part of a suggestion, for a run with this ``run_start``."""
    clip = configured(start, "max_grad_norm")
    if isinstance(clip, int | float) and not isinstance(clip, bool) and clip > 0:
        return (
            f"gradients are already clipped at max_norm {clip:g}, so lower the learning rate "
            f"or clip harder (max_norm {clip / 2:g})"
        )
    return "clip gradients at max_norm 1.0"
