"""Alerts sent by the training process itself (``TunescopeCallback(webhook=...)``).

Who judges: the detectors, not a copy of them. TS001 (non-finite) and TS102
(divergence) run their own ``run`` functions over this rank's records in
memory, the guard's :class:`~tunescope.train.live_frames.LiveFrames`, with the
options of the configuration file ``tunescope analyze`` would use for the run
(``[tool.tunescope.TS102]``...). So an alert says what ``analyze`` would say
of the log so far, in its words, with its suggestion.

When: every step's loss and grad norm are tested with ``math.isfinite``
(the one check that must not wait; it is the same test TS001 starts from),
and a non-finite value runs the detectors at once. Otherwise they run every
``check_every`` steps, or every 1% of the steps so far when that is more (the
guard's cadence: a check reads the whole history, so its cost per step stays
flat). A divergence is therefore alerted up to ``check_every`` steps after
the detector could see it.

One alert per run, rank and detector: the first finding at warning or above.
A detector superseded by one already alerted (TS001 covers TS102: a loss gone
NaN is one incident, as in the engine pass) is not alerted again.

Pass Python floats (``loss.item()`` is a host-device sync point: reuse the
value the trainer already logs). Nothing here imports torch, and sending
never waits on the network (:class:`~tunescope.alerts.AlertSender`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunescope.alerts import Alert, AlertSender, RetryPolicy
from tunescope.findings import Finding, Severity
from tunescope.train.live_frames import LiveFrames

_COLS = ("step", "ts", "loss", "lr", "grad_norm")


class TrainingAlerts:
    """Live alerts for the runs of one training process.

    Args:
        sender: where alerts go (None: judge only; ``on_step`` still returns findings).
        start: the run's ``run_start`` fields (``warmup_steps``, ``total_steps``,
            ``model``...): the detectors read the warmup from them.
        config: the detectors' configuration (:func:`tunescope.config.load_config`);
            None: the one found from ``run_dir``, else the defaults.
        run_dir: where to look for that configuration file.
        check_every: steps between two detector checks (at least).
    """

    def __init__(
        self,
        sender: AlertSender | None,
        *,
        start: dict[str, Any] | None = None,
        config: Any = None,
        run_dir: str | os.PathLike[str] | None = None,
        check_every: int = 25,
    ) -> None:
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        # one-time imports, so that no step pays for them
        from tunescope.config import load_config
        from tunescope.detectors import divergence, nonfinite
        from tunescope.detectors.selection import build_options

        if config is None:
            config = load_config(None, starts=[Path(run_dir)] if run_dir else [])
        self.sender = sender
        self.start = dict(start or {})
        self.check_every = check_every
        self.detectors = [
            (m.ID, m.run, build_options(config, m.ID, m.Options), tuple(m.SUPERSEDES))
            for m in (nonfinite, divergence)
        ]
        self.checks = 0
        self._cols: dict[tuple[str, int], dict[str, list]] = {}
        self._last_check: dict[tuple[str, int], int] = {}
        self._fired: set[tuple[str, int, str]] = set()

    @classmethod
    def for_webhook(
        cls,
        urls: str | Sequence[str],
        *,
        format: str = "auto",
        secret: str | None = None,
        outbox: str | os.PathLike[str] | None = None,
        policy: RetryPolicy | None = None,
        **options: Any,
    ) -> TrainingAlerts:
        """Checks that send to ``urls`` (an :class:`AlertSender` of their own);
        ``options`` are this class's keyword arguments (``start``, ``run_dir``...)."""
        sender = AlertSender(urls, format=format, secret=secret, outbox=outbox, policy=policy)
        return cls(sender, **options)

    def close(self, timeout: float = 5.0) -> int:
        """Deliver what is queued (up to ``timeout`` s); returns how many were not."""
        return self.sender.close(timeout) if self.sender is not None else 0

    # ---- steps -------------------------------------------------------------------------

    def on_step(
        self,
        run: str,
        rank: int,
        step: int,
        loss: float | None = None,
        grad_norm: float | None = None,
        lr: float | None = None,
        ts: float | None = None,
    ) -> Finding | None:
        """Record one step; returns the finding alerted now, if any."""
        key = (run, rank)
        cols = self._cols.get(key)
        if cols is None:
            cols = self._cols[key] = {c: [] for c in _COLS}
            self._last_check[key] = step
        loss, grad_norm, lr = _as_float(loss), _as_float(grad_norm), _as_float(lr)
        cols["step"].append(step)
        cols["ts"].append(time.time() if ts is None else ts)
        cols["loss"].append(loss)
        cols["lr"].append(lr)
        cols["grad_norm"].append(grad_norm)
        bad = any(v is not None and not math.isfinite(v) for v in (loss, grad_norm))
        if not (bad or self._due(key, step)):
            return None
        self._last_check[key] = step
        return self._check(run, rank, step, loss, lr)

    def _due(self, key: tuple[str, int], step: int) -> bool:
        return step - self._last_check[key] >= max(self.check_every, step // 100)

    def _check(
        self, run: str, rank: int, step: int, loss: float | None, lr: float | None
    ) -> Finding | None:
        """Run the detectors not alerted yet over the records of ``(run, rank)``."""
        self.checks += 1
        ctx = LiveFrames(run, rank, self._cols[(run, rank)], self.start)
        sent = None
        for detector, judge, opts, _ in self.detectors:
            if self._covered(run, rank, detector):
                continue
            found = [f for f in judge(ctx, opts) if f.severity.level >= Severity.WARNING.level]
            if not found:
                continue
            f = min(found, key=lambda f: f.step_start or 0)
            f.rank = rank  # this rank's own records: the incident is this rank's
            self._fired.add((run, rank, detector))
            summary = {"status": "running", "last_step": step, "last_loss": loss, "last_lr": lr}
            self._send(f, summary)
            sent = sent or f
        return sent

    def _covered(self, run: str, rank: int, detector: str) -> bool:
        if (run, rank, detector) in self._fired:
            return True
        return any(
            detector in supersedes and (run, rank, other) in self._fired
            for other, _, _, supersedes in self.detectors
        )

    # ---- the guard ---------------------------------------------------------------------

    def intervention(
        self, run: str, rank: int, step: int, action: str, finding: str, reason: str
    ) -> Finding:
        """Announce what the training guard did (``action`` at ``step`` because
        of detector ``finding``): detector ``guard-<action>``, a warning."""
        f = Finding(
            run=run,
            rank=rank,
            detector=f"guard-{action}",
            name=f"guard {action}",
            severity=Severity.WARNING,
            step_start=step,
            step_end=step,
            message=f"the training guard did {action} at step {step} ({finding}: {reason})",
            suggestion="see the run's intervention events; the run goes on unless the action "
            "was stop",
            evidence={"action": action, "finding": finding},
        )
        return self._send(f, {"status": "running", "last_step": step})

    def _send(self, finding: Finding, summary: dict[str, Any]) -> Finding:
        if self.sender is not None:
            run = {
                **summary,
                "total_steps": self.start.get("total_steps") or None,
                "model": self.start.get("model"),
            }
            self.sender.send(Alert(finding, run={k: v for k, v in run.items() if v is not None}))
        return finding


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
