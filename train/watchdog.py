"""The hung-rank watchdog: a thread that notices when this rank stops making
progress, and a checkpoint written from that thread while the process still can.

A rank is hung when no step ends for ``hang_factor`` times the median of the
recent step times (and at least ``hang_min_seconds``). The watchdog then calls
its ``on_hang`` once, from its own thread, and again only after progress
resumed and stopped again.

Under DDP a hung rank blocks every other rank in the next collective, so every
rank's watchdog fires; none of them takes part in a collective (a rank blocked
in one cannot answer, and the watchdog must not hang as well). The weights and
the optimizer state are the same on every rank and are not touched while the
ranks wait, so rank 0 alone writes the checkpoint of the last finished step,
in the Trainer's own layout (``resume_from_checkpoint`` takes it); the other
ranks only log the intervention.
"""

from __future__ import annotations

import os
import shutil
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Watchdog:
    """Calls ``on_hang(step, waited_s, typical_s)`` from its thread when no
    :meth:`beat` with a new step came for ``factor`` x the median recent step
    time (at least ``min_seconds``). ``step`` is the last step that finished."""

    def __init__(
        self,
        factor: float,
        min_seconds: float,
        on_hang: Callable[[int, float, float], None],
        history: int = 20,
    ) -> None:
        self.factor, self.min_seconds, self.on_hang = factor, min_seconds, on_hang
        self._times: deque[float] = deque(maxlen=history)
        self._last = time.monotonic()
        self._step = 0
        self._fired = False
        self._held = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tunescope-watchdog", daemon=True)

    def start(self, step: int = 0) -> Watchdog:
        self._step = step
        self._last = time.monotonic()
        self._thread.start()
        return self

    def beat(self, step: int | None = None) -> None:
        """Progress: a step ended (``step``), or other work of the loop did
        (a checkpoint, an evaluation: ``None``, not counted as a step time)."""
        now = time.monotonic()
        with self._lock:
            if step is not None and step > self._step:
                self._times.append((now - self._last) / (step - self._step))
                self._step = step
            self._last = now
            self._fired = False
            self._held = False

    def hold(self) -> None:
        """No judgement until the next :meth:`beat` (the loop is saving or
        evaluating, which may take longer than any step)."""
        with self._lock:
            self._held = True

    def limit(self) -> float | None:
        """Seconds without a step that count as hung (None: too few steps yet)."""
        with self._lock:
            if len(self._times) < 3:
                return None
            return max(self.factor * statistics.median(self._times), self.min_seconds)

    def _watch(self) -> None:
        while not self._stop.wait(self._poll()):
            limit = self.limit()
            with self._lock:
                waited = time.monotonic() - self._last
                if limit is None or self._fired or self._held or waited <= limit:
                    continue
                self._fired = True
                step, typical = self._step, statistics.median(self._times)
            try:
                self.on_hang(step, waited, typical)
            except Exception as e:  # the training thread is stuck: say why, never die silently
                from tunescope.say import error

                error(f"hang watchdog: {type(e).__name__}: {e}")

    def _poll(self) -> float:
        limit = self.limit()
        return 0.5 if limit is None else min(1.0, max(0.05, limit / 10))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def checkpoint_now(
    output_dir: str | Path, step: int, model: Any, optimizer: Any, scheduler: Any, state: Any
) -> Path:
    """Write ``output_dir/checkpoint-STEP`` as the Trainer would (model or
    adapter weights, optimizer, scheduler, trainer state) without any
    collective, so that it works while the training thread is stuck. Written
    to a temporary folder and renamed: a checkpoint exists whole or not at all.
    An existing checkpoint of that step is kept as it is."""
    import torch

    out = Path(output_dir)
    ckpt = out / f"checkpoint-{step}"
    if (ckpt / "trainer_state.json").exists():
        return ckpt
    tmp = out / f".checkpoint-{step}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    state.save_to_json(str(tmp / "trainer_state.json"))
    shutil.rmtree(ckpt, ignore_errors=True)  # a partial one from a save that hung
    tmp.rename(ckpt)
    return ckpt
