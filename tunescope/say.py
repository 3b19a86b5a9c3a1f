"""The one console printer: whole ``tunescope: ...`` lines on stderr.

Every part of the tool (CLI, cache, watch, alerts, trainer) speaks to the
user through these two functions, so messages look the same everywhere and
lines from several threads never interleave.
"""

from __future__ import annotations

import sys
import threading

_lock = threading.Lock()


def say(message: str) -> None:
    """Print ``tunescope: message`` on stderr, as one whole line."""
    with _lock:
        print(f"tunescope: {message}", file=sys.stderr, flush=True)


def error(message: str) -> None:
    """Print ``tunescope: error: message`` on stderr, as one whole line."""
    say(f"error: {message}")
