"""Ctrl-C and SIGTERM for the commands that run until stopped (``watch``,
``metrics``): a handler of the command's own, set for the length of a block."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

Handler = Callable[[int, Any], None]


@contextlib.contextmanager
def on_stop_signals(handler: Handler) -> Iterator[None]:
    """``handler`` answers SIGINT and SIGTERM inside the block; the previous
    handlers come back after it. Handlers can only be set from the main
    thread: where this runs in another (an embedding app), nothing is set and
    the signals are the app's business."""
    main = threading.current_thread() is threading.main_thread()
    signals = [signal.SIGINT, signal.SIGTERM] if main else []
    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
