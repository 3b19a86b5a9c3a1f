"""The guard: the training process acts on what the detectors find.

``TunescopeCallback(run_dir, guard="rewind")``, ``guard:`` in the bundled
trainer's config or ``tunescope train ... --guard skip|stop|rewind``. A policy
names one action per kind of finding; ``report`` (the default) only logs:

| finding | actions | where |
|---|---|---|
| TS001 non-finite loss or grad norm on a step | ``skip`` the optimizer step; after ``skip_limit`` skips within ``skip_window`` steps, ``stop`` | any ``Trainer`` |
| TS102 divergence or an unrecovered spike | ``stop`` (checkpoint, then end); ``rewind`` (reload the last checkpoint before the onset, skip the batches seen from the onset to the detection, learning rate x ``lr_factor``, at most ``max_rewinds`` times) | stop: any ``Trainer``; rewind: the bundled trainer |
| TS401 memory heading for out-of-memory before the planned end | ``checkpoint`` now | any ``Trainer`` |
| TS301 a hung rank: no step for ``hang_factor`` x the recent step time | ``checkpoint`` now, from a watchdog thread (:mod:`tunescope.train.watchdog`) | any ``Trainer`` |

Shorthands: ``skip`` = TS001 skip; ``stop`` = TS001 skip, TS102 stop, TS401
and hang checkpoint; ``rewind`` = TS001 skip, TS102 rewind, TS401 and hang
checkpoint.

TS102 and TS401 are judged by the detectors' own ``run`` functions over this
rank's own step records (:class:`~tunescope.train.live_frames.LiveFrames`: in
memory, no store, no SQL), every ``check_every`` steps (or every 1% of the
steps so far, when more), so the cost per step stays flat and decisions are
reproducible (``bench/train_overhead.py`` measures it). The non-finite check needs no
extra host-device sync: on one rank it looks at the values the callback reads
once per step anyway; under DDP every rank puts its flags into one small
all-reduce (max) per step, read in that same one read, so all ranks skip,
stop or rewind at the same step together.

Every action is written as an ``intervention`` event: the finding, the action,
the steps affected, and what was done (checkpoint, lr factor, batches skipped).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tunescope.train.live_frames import LiveFrames

SHORTHANDS: dict[str, dict[str, Any]] = {
    "report": {},
    "off": {},
    "skip": {"nonfinite": "skip"},
    "stop": {
        "nonfinite": "skip",
        "divergence": "stop",
        "memory": "checkpoint",
        "hang": "checkpoint",
    },
    "rewind": {
        "nonfinite": "skip",
        "divergence": "rewind",
        "memory": "checkpoint",
        "hang": "checkpoint",
    },
}
_CHOICES = {
    "nonfinite": ("report", "skip", "stop"),
    "divergence": ("report", "stop", "rewind"),
    "memory": ("report", "checkpoint"),
    "hang": ("report", "checkpoint"),
}

# codes in the per-step flag vector: [nonfinite, stop, rewind, checkpoint, -onset]
_STOP, _REWIND, _CKPT = 1, 2, 3


@dataclass
class GuardPolicy:
    """What the guard does per kind of finding (all ``report`` by default)."""

    nonfinite: str = "report"
    """TS001, a non-finite loss or grad norm on a step: report, skip or stop."""
    skip_limit: int = 3
    """Skips within ``skip_window`` steps that escalate to ``stop``."""
    skip_window: int = 50
    """The window (in steps) of ``skip_limit``."""
    divergence: str = "report"
    """TS102, divergence or an unrecovered spike: report, stop or rewind."""
    lr_factor: float = 0.5
    """Rewind: the learning rate is multiplied by this after each rewind."""
    max_rewinds: int = 2
    """Rewind: at most this many; the next divergence stops the run."""
    memory: str = "report"
    """TS401, out-of-memory forecast before the planned end: report or checkpoint."""
    hang: str = "report"
    """A hung rank (no step for ``hang_factor`` x the recent step time):
    report or checkpoint (see :mod:`tunescope.train.watchdog`)."""
    hang_factor: float = 10.0
    """No step for this many times the median recent step time is a hang."""
    hang_min_seconds: float = 60.0
    """... and for at least this many seconds (a slow checkpoint or evaluation
    is not a hang)."""
    check_every: int = 25
    """The live TS102/TS401 checks run every this many steps, or every 1% of
    the steps so far when that is more (a check reads the whole history, so
    its cost per step stays flat). Counted in steps, never in seconds, so the
    same seed and faults give the same decisions at the same steps."""

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"guard {name}: expected one of {', '.join(choices)}, "
                    f"got {getattr(self, name)!r}"
                )
        if self.skip_limit < 1 or self.skip_window < 1:
            raise ValueError("guard skip_limit and skip_window must be >= 1")
        if not 0 < self.lr_factor <= 1:
            raise ValueError(f"guard lr_factor must be in (0, 1], got {self.lr_factor}")
        if self.hang_factor <= 1 or self.hang_min_seconds <= 0:
            raise ValueError("guard hang_factor must be > 1 and hang_min_seconds > 0")
        if self.max_rewinds < 0 or self.check_every < 1:
            raise ValueError("guard max_rewinds must be >= 0 and check_every >= 1")

    @classmethod
    def parse(cls, value: Any) -> GuardPolicy:
        """A shorthand (``report``, ``skip``, ``stop``, ``rewind``), a mapping of
        fields (``policy:`` may name a shorthand to start from), or a policy."""
        if isinstance(value, GuardPolicy):
            return value
        if value is None:
            return cls()
        if isinstance(value, str):
            if value not in SHORTHANDS:
                raise ValueError(
                    f"guard: expected one of {', '.join(SHORTHANDS)} or a mapping, got {value!r}"
                )
            return cls(**SHORTHANDS[value])
        if isinstance(value, dict):
            items = dict(value)
            base = items.pop("policy", "report")
            if base not in SHORTHANDS:
                raise ValueError(f"guard policy: expected one of {', '.join(SHORTHANDS)}")
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(items) - known)
            if unknown:
                raise ValueError(
                    f"guard: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}"
                )
            return cls(**{**SHORTHANDS[base], **items})
        raise ValueError(f"guard: expected a name or a mapping, got {value!r}")

    @property
    def active(self) -> bool:
        return any(getattr(self, n) != "report" for n in _CHOICES)

    @property
    def checks(self) -> bool:
        """Whether the live detector checks (TS102, TS401) are needed."""
        return self.divergence != "report" or self.memory != "report"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Guard:
    """The guard's state in one training process (shared by the callbacks of
    successive attempts when the bundled trainer rewinds).

    ``can_rewind`` is set by a driver that restarts training from
    :attr:`rewind` (the bundled trainer); without one, ``rewind`` acts as ``stop``.
    """

    _COLS = ("step", "ts", "loss", "lr", "grad_norm", "mem_allocated_mb", "mem_peak_mb")

    def __init__(self, policy: Any = "report", *, can_rewind: bool = False) -> None:
        self.policy = GuardPolicy.parse(policy)
        self.can_rewind = can_rewind
        self.cols: dict[str, list] = {c: [] for c in self._COLS}
        self.skips: deque[int] = deque()
        self.skipped_total = 0
        self.rewinds = 0
        self.lr_scale = 1.0  # the factor the current attempt runs at
        self.scale_at_save: dict[int, float] = {}
        self.pending_lr: float = 1.0  # to apply to the optimizer at the next train begin
        self.rewind: dict[str, Any] | None = None  # a rewind for the driver to do
        self.stopped: dict[str, Any] | None = None
        self.acted_memory = False
        self.hangs = 0  # checkpoints written because this rank looked hung
        self.request = 0  # this rank's request for the next step's flags
        self.request_onset = 0
        self.request_finding: dict[str, Any] | None = None
        self.check_cost = 0.0  # CPU seconds (this thread's) the last live check took
        self.checks_run = 0
        self.check_seconds = 0.0
        self._last_check = 0  # the step of the last live check
        self.run_id = "run"
        self.rank = 0
        self.start: dict[str, Any] = {}
        self.options: dict[str, Any] = {}  # detector id -> its Options
        self._memory_check = False
        self._kept: dict[Any, Any] = {}  # frames that stay the same between checks

    # ---- records and the live check ------------------------------------------------

    def begin(
        self,
        run_id: str,
        rank: int,
        start: dict[str, Any],
        resumed_at: int,
        run_dir: str | Path | None = None,
    ) -> None:
        """A (re)start of training at ``resumed_at``: records after it are
        replaced by the new attempt's (the newest write of a step wins). The
        detectors' options come from the configuration file ``analyze`` would
        use for ``run_dir`` (``[tool.tunescope.TS102]``...), else defaults."""
        self.run_id, self.rank, self.start = run_id, rank, start
        steps = self.cols["step"]
        if steps and resumed_at < steps[-1]:
            keep = sum(1 for s in steps if s <= resumed_at)
            for c in self.cols.values():
                del c[keep:]
        self.request, self.request_finding = 0, None
        self._last_check = resumed_at
        if self.policy.checks:
            # one-time imports, so a step never pays for them
            import polars  # noqa: F401

            from tunescope.config import load_config
            from tunescope.detectors import divergence, memory_growth
            from tunescope.detectors.selection import build_options

            cfg = load_config(None, starts=[Path(run_dir)] if run_dir else [])
            # without the device's size TS401 makes no out-of-memory forecast,
            # the only finding the guard acts on: then its check is not run
            self._memory_check = (
                self.policy.memory != "report"
                and memory_growth.capacity_mb(start, rank) is not None
            )
            self._kept = {}
            self.options = {
                m.ID: build_options(cfg, m.ID, m.Options) for m in (divergence, memory_growth)
            }
            # one throwaway pass on a made-up series: first-call costs are not
            # a step's, and would stretch the check cadence for no reason
            n = 60
            fake: dict[str, list[Any]] = {c: [] for c in self._COLS}
            fake["step"] = list(range(1, n + 1))
            fake["ts"] = [float(i) for i in range(n)]
            fake["loss"] = [2.0 + 1.0 / i for i in range(1, n + 1)]
            fake["mem_allocated_mb"] = [100.0 + i for i in range(n)]
            for name in ("lr", "grad_norm", "mem_peak_mb"):
                fake[name] = [None] * n
            ctx = LiveFrames(run_id, rank, fake, {})
            divergence.run(ctx, self.options[divergence.ID])
            memory_growth.run(ctx, self.options[memory_growth.ID])

    def add(self, step: int, ts: float, rec: dict[str, Any]) -> None:
        for c in self._COLS[2:]:
            v = rec.get(c)
            self.cols[c].append(float(v) if v is not None else None)
        self.cols["step"].append(step)
        self.cols["ts"].append(ts)

    def due(self, step: int) -> bool:
        """Whether a live check runs after ``step`` (see ``check_every``)."""
        if not self.policy.checks:
            return False
        every = max(self.policy.check_every, step // 100)
        if step - self._last_check < every:
            return False
        self._last_check = step
        return True

    def check(self) -> None:
        """Run TS102 and TS401 on this rank's records; a finding that calls for
        an action becomes this rank's request for the next step."""
        import time

        t0 = time.thread_time()  # CPU time: not inflated by other processes on the machine
        from tunescope.findings import Severity

        ctx = LiveFrames(self.run_id, self.rank, self.cols, self.start, self._kept)
        if self.policy.divergence != "report" and not self.request:
            from tunescope.detectors import divergence

            for f in divergence.run(ctx, self.options[divergence.ID]):
                if f.severity == Severity.ERROR:
                    code = _REWIND if self.policy.divergence == "rewind" else _STOP
                    self._ask(code, int(f.step_start or 0), f)
                    break
        if self._memory_check and not self.request and not self.acted_memory:
            from tunescope.detectors import memory_growth

            for f in memory_growth.run(ctx, self.options[memory_growth.ID]):
                fc = (f.evidence or {}).get("forecast") if isinstance(f.evidence, dict) else None
                if f.severity == Severity.ERROR and fc:
                    self._ask(_CKPT, int(f.step_start or 0), f)
                    break
        self.check_cost = time.thread_time() - t0
        self.checks_run += 1
        self.check_seconds += self.check_cost

    def _ask(self, code: int, onset: int, f: Any) -> None:
        self.request, self.request_onset = code, onset
        self.request_finding = {
            "finding": f.detector,
            "message": f.message,
            "onset": onset,
            "detected": int(f.step_end or onset),
        }

    def flags(self) -> list[float]:
        """This rank's requests for the step's flag vector (after the
        non-finite flag): stop, rewind, checkpoint, -onset (max-reduced)."""
        r = self.request
        onset = -float(self.request_onset) if r else -math.inf
        return [float(r == _STOP), float(r == _REWIND), float(r == _CKPT), onset]

    # ---- decisions --------------------------------------------------------------------

    def note_skip(self, step: int) -> bool:
        """Count a skipped step; True when the skips escalate to stop."""
        self.skips.append(step)
        self.skipped_total += 1
        while self.skips and self.skips[0] <= step - self.policy.skip_window:
            self.skips.popleft()
        return len(self.skips) >= self.policy.skip_limit

    def last_checkpoint_before(self, output_dir: str | Path, step: int) -> Path | None:
        best: tuple[int, Path] | None = None
        for p in Path(output_dir).glob("checkpoint-*"):
            try:
                n = int(p.name.rsplit("-", 1)[1])
            except ValueError:
                continue
            if n < step and (p / "trainer_state.json").exists() and (best is None or n > best[0]):
                best = (n, p)
        return best[1] if best else None
