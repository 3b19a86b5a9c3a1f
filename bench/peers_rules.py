"""The published decision rules of the tools people use beside tunescope,
re-implemented over logged series (steps, losses, gradient norms) so that
``bench/peers.py`` can replay them on labelled logs.

Each rule follows its tool's published source with its published defaults;
the code here is written from those descriptions. On the series of
``fixtures/real``, ``shared/real-logs`` and ``fixtures/runs`` (58 runs)
the replays raise the same alerts at the same steps as the tools' own code
(lightning 2.6.6, trainscope 1.8.1, trainsight 0.2.1 and gradscope 0.1.0 from
PyPI, run outside this project; none is a dependency of it), all but
trainsight's gradient thresholds, whose hooks need a model to run.

- ``lightning_spike``: Lightning's ``SpikeDetection`` callback
  (Lightning-AI/pytorch-lightning @ 0c94c0ea,
  ``src/lightning/fabric/utilities/spike.py``; the ``lightning.pytorch.callbacks``
  class hands it the step's loss). From batch ``warmup`` on, a loss is a spike
  when it is not an improvement on the previous loss (mode ``min``: it rose)
  and it differs from the running mean of the last ``window`` losses by at
  least ``atol`` (when set) and by at least ``rtol`` times that mean. With
  ``finite_only`` a NaN or Inf loss is a spike. A spike leaves the running mean
  and the previous loss untouched. The callback then raises and ends training;
  the replay goes on as if the run had been resumed, so that every spike counts.
- ``trainscope_cusum``: trainscope's default detector, ``ChangePointDetector``
  (kaelvalen/trainscope @ 1416f387, ``trainscope/core/detectors/changepoint.py``;
  default chosen in ``core/config.py``; non-finite losses are not fed, and any
  score is a spike, in ``scope.py``). The first ``min_observations`` losses only
  fill the history; then each loss is scored ``z = (loss - median) / (1.4826 MAD)``
  over the last ``window`` losses, and Page's two-sided CUSUM
  ``S+ = max(0, S+ + z - k)``, ``S- = min(0, S- + z + k)`` fires when either
  reaches ``h``, then both restart from 0. With ``ruptures`` installed a PELT
  pass may change the score of an alarm CUSUM raised (from 1.8.1 on), never
  whether or where it fires, so it is not replayed.
- ``trainsight_*``: trainsight (modalgrasp/trainsight @ 13251b38).
  ``trainsight/ml/loss_monitor.py``: every 10th update, once 50 losses are
  held, a least-squares line over the last 50 (steps scaled to 0..1) is a
  plateau when ``|slope| < 0.001`` and a divergence when ``slope > 0.01``;
  with 10 eval losses held, overfitting when the mean of the last 10 eval
  losses exceeds the mean of the last 10 train losses by more than 20%.
  ``trainsight/ml/amp_monitor.py``: every 20th update, once 20 losses are held,
  instability when the coefficient of variation of the last 100 losses exceeds
  0.5 (its overflow-rate test needs the AMP scaler's flags, which logs lack).
  ``trainsight/integrations/pytorch.py``: a gradient norm above 100 is an
  explosion (critical above 1000), below 1e-7 vanishing; the tool reads
  per-layer norms, the replay the logged global norm, which is at least every
  layer's, so it fires whenever the per-layer rule would, and may fire more.
- ``gradscope``: the ``gradscope`` package on PyPI (0.1.0,
  ``gradscope/alerts.py`` ``AlertRules.evaluate_gradients`` with the defaults of
  ``gradscope/config.py``), each layer's norm judged on its own: below 1e-8
  vanishing, else above 1e3 exploding; ``|z| > 4`` against the mean and standard
  deviation of the last 20 norms (the current one included); above 5x the
  previous exponential average (alpha 0.95); each kind at most once per 50
  steps (the package builds its rate limiter from the constructor's argument,
  None by default, so its second alert of a kind raises ``TypeError``; the
  replay uses the configured 50). The replay hands it the global norm as the one layer; its
  spread-across-layers rule needs per-layer norms, and its average-norm rule an
  average that its wheel's missing backend computes. A GitHub project of the
  same name (Mahdi-Rashidiyan/GradScope @ e8425524, ``gradscope/tracker.py``)
  warns at a global norm below 1e-5 or above 1e3; no log here comes near either.

Every rule sees what a log holds: one point per logged step (HF-style logs
average the loss over each logging interval), where the tool inside a training
loop sees every batch; a batch index is a logged point's position.

A rule that compares with NaN is false (as in Python, numpy and torch): a NaN
norm is neither exploding nor vanishing. A fit over a window that holds a NaN
(numpy raises there) counts as no alert.

    python bench/peers_rules.py     # each rule on a small series with one spike
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

KIND = {
    "spike": ("TS001", "TS101", "TS102"),
    "cusum-up": ("TS101", "TS102"),
    "cusum-down": (),
    "plateau": ("TS103",),
    "divergence": ("TS102",),
    "overfitting": ("TS104",),
    "amp-instability": ("TS101", "TS102"),
    "grad-explosion": ("TS105",),
    "grad-vanishing": ("TS201",),
    "grad-z-spike": ("TS105",),
    "grad-ema-spike": ("TS105",),
}
"""Which tunescope detectors' faults each peer rule speaks of: a peer's alert
catches a labelled fault when its rule names the fault's detector here (a
CUSUM alarm on a falling loss names none)."""


@dataclass(frozen=True)
class Alert:
    """One alert a peer's rule raised while replaying a series."""

    peer: str
    rule: str
    step: int
    value: float
    """The number the rule compared: the loss, the CUSUM sum, the slope, the
    coefficient of variation, the gradient norm, the eval/train gap."""


def lightning_spike(
    steps: Sequence[int],
    losses: Sequence[float],
    *,
    mode: str = "min",
    window: int = 10,
    warmup: int = 1,
    atol: float | None = None,
    rtol: float | None = 2.0,
    finite_only: bool = True,
) -> list[Alert]:
    """Lightning ``SpikeDetection`` over a logged loss series (one point per batch)."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
    recent: deque[float] = deque(maxlen=window)
    last = 0.0
    out = []
    for i, (step, loss) in enumerate(zip(steps, losses, strict=True)):
        spike = False
        if i >= warmup:
            mean = sum(recent) / len(recent) if recent else math.nan
            diff = loss - last
            if finite_only and not math.isfinite(loss):
                spike = True
            elif not (diff <= 0.0 if mode == "min" else diff >= 0.0):
                far_abs = atol is None or abs(loss - mean) >= abs(atol)
                far_rel = rtol is None or abs(loss - mean) >= abs(rtol * mean)
                spike = far_abs and far_rel
        if spike:
            out.append(Alert("lightning", "spike", int(step), float(loss)))
        elif finite_only or math.isfinite(loss):
            recent.append(loss)
            last = loss
    return out


def trainscope_cusum(
    steps: Sequence[int],
    losses: Sequence[float],
    *,
    threshold: float = 6.0,
    slack: float = 1.0,
    window: int = 200,
    min_observations: int = 30,
) -> list[Alert]:
    """trainscope's two-sided CUSUM on robust z-scores of the loss."""
    history: deque[float] = deque()
    up = down = 0.0
    out = []
    for step, loss in zip(steps, losses, strict=True):
        if not math.isfinite(loss):
            continue
        if len(history) < min_observations:
            history.append(loss)
            continue
        med = statistics.median(history)
        spread = max(1.4826 * statistics.median(abs(h - med) for h in history), 1e-12)
        z = (loss - med) / spread
        up = max(0.0, up + z - slack)
        down = min(0.0, down + z + slack)
        history.append(loss)
        if len(history) > window:
            history.popleft()
        if up >= threshold:
            out.append(Alert("trainscope", "cusum-up", int(step), up))
            up = down = 0.0
        elif -down >= threshold:
            out.append(Alert("trainscope", "cusum-down", int(step), down))
            up = down = 0.0
    return out


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The least-squares slope of ys on xs, with xs scaled to 0..1 (as trainsight does)."""
    span = xs[-1] - xs[0]
    n = len(xs)
    x = [(v - xs[0]) / span for v in xs] if span > 0 else [i / (n - 1) for i in range(n)]
    mx, my = sum(x) / n, sum(ys) / n
    sxx = sum((a - mx) ** 2 for a in x)
    return sum((a - mx) * (b - my) for a, b in zip(x, ys, strict=True)) / sxx if sxx else math.nan


def trainsight_loss(
    steps: Sequence[int],
    losses: Sequence[float],
    evals: Sequence[float | None] | None = None,
    *,
    window: int = 50,
    plateau: float = 0.001,
    divergence: float = 0.01,
    overfit_gap_pct: float = 20.0,
    every: int = 10,
) -> list[Alert]:
    """trainsight's ``LossTrendMonitor``: ``evals[i]`` is the eval loss handed
    in with the i-th train loss (None: no eval then)."""
    window = max(10, window)
    train: list[float] = []
    xs: list[float] = []
    val: list[float] = []
    out = []
    for i, (step, loss) in enumerate(zip(steps, losses, strict=True)):
        xs.append(float(step))
        train.append(float(loss))
        ev = evals[i] if evals is not None else None
        if ev is not None:
            val.append(float(ev))
        if (i + 1) % every or len(train) < window:
            continue
        slope = _slope(xs[-window:], train[-window:])
        if abs(slope) < plateau:
            out.append(Alert("trainsight", "plateau", int(step), slope))
        elif slope > divergence:
            out.append(Alert("trainsight", "divergence", int(step), slope))
        if len(val) >= 10:
            t = sum(train[-10:]) / 10
            v = sum(val[-10:]) / 10
            if t > 0 and (v - t) / t * 100.0 > overfit_gap_pct:
                out.append(Alert("trainsight", "overfitting", int(step), (v - t) / t))
    return out


def trainsight_amp(
    steps: Sequence[int],
    losses: Sequence[float],
    *,
    window: int = 100,
    cv_threshold: float = 0.5,
    every: int = 20,
) -> list[Alert]:
    """trainsight's ``AMPStabilityMonitor``, loss half: the spread of recent losses."""
    window = max(10, window)
    recent: deque[float] = deque(maxlen=window)
    out = []
    for i, (step, loss) in enumerate(zip(steps, losses, strict=True)):
        recent.append(float(loss))
        if len(recent) < 20 or (i + 1) % every:
            continue
        mean = sum(recent) / len(recent)
        std = math.sqrt(sum((v - mean) ** 2 for v in recent) / len(recent))
        cv = std / (abs(mean) + 1e-8)
        if cv > cv_threshold:
            out.append(Alert("trainsight", "amp-instability", int(step), cv))
    return out


def trainsight_grads(
    steps: Sequence[int],
    norms: Sequence[float],
    *,
    explosion: float = 100.0,
    vanishing: float = 1e-7,
) -> list[Alert]:
    """trainsight's gradient hook thresholds, on the logged global norm."""
    out = []
    for step, g in zip(steps, norms, strict=True):
        if g > explosion:
            out.append(Alert("trainsight", "grad-explosion", int(step), g))
        elif g < vanishing:
            out.append(Alert("trainsight", "grad-vanishing", int(step), g))
    return out


def gradscope(
    steps: Sequence[int],
    norms: Sequence[float],
    *,
    vanishing: float = 1e-8,
    exploding: float = 1e3,
    window: int = 20,
    z_threshold: float = 4.0,
    spike_factor: float = 5.0,
    alpha: float = 0.95,
    quiet_steps: int = 50,
) -> list[Alert]:
    """gradscope's gradient alert rules, the global norm as the one layer."""
    recent: deque[float] = deque(maxlen=window)
    ema: float | None = None
    last: dict[str, int] = {}
    out = []

    def fire(rule: str, step: int, g: float) -> None:
        if rule not in last or step - last[rule] >= quiet_steps:
            last[rule] = step
            out.append(Alert("gradscope", rule, step, g))

    for step, g in zip(steps, norms, strict=True):
        step = int(step)
        prev = ema
        ema = g if ema is None else alpha * ema + (1 - alpha) * g
        recent.append(g)
        if g < vanishing:
            fire("grad-vanishing", step, g)
        elif g > exploding:
            fire("grad-explosion", step, g)
        mean = sum(recent) / len(recent)
        sd = math.sqrt(sum((v - mean) ** 2 for v in recent) / len(recent))
        if sd > 1e-12 and abs((g - mean) / sd) > z_threshold:
            fire("grad-z-spike", step, g)
        if prev is not None and g > prev * spike_factor:
            fire("grad-ema-spike", step, g)
    return out


PEERS = ("lightning", "trainscope", "trainsight", "gradscope")
RULES = (
    ("lightning", "spike"),
    ("trainscope", "cusum-up"),
    ("trainscope", "cusum-down"),
    ("trainsight", "plateau"),
    ("trainsight", "divergence"),
    ("trainsight", "overfitting"),
    ("trainsight", "amp-instability"),
    ("trainsight", "grad-explosion"),
    ("trainsight", "grad-vanishing"),
    ("gradscope", "grad-explosion"),
    ("gradscope", "grad-vanishing"),
    ("gradscope", "grad-z-spike"),
    ("gradscope", "grad-ema-spike"),
)
"""Every (peer, rule) pair the replay can raise, in peer order."""


def replay(
    steps: Sequence[int],
    losses: Sequence[float],
    grad_steps: Sequence[int] = (),
    grad_norms: Sequence[float] = (),
    evals: Sequence[float | None] | None = None,
) -> list[Alert]:
    """Every peer's rules over one run's series, in peer order."""
    return [
        *lightning_spike(steps, losses),
        *trainscope_cusum(steps, losses),
        *trainsight_loss(steps, losses, evals),
        *trainsight_amp(steps, losses),
        *trainsight_grads(grad_steps, grad_norms),
        *gradscope(grad_steps, grad_norms),
    ]


def spike_series(n: int = 120, at: int = 80) -> tuple[list[int], list[float], list[float]]:
    """A small synthetic run: a loss falling gently with a small alternating
    wobble, one loss spike x5 and one gradient-norm spike x3000 at step ``at``."""
    steps = list(range(1, n + 1))
    losses = [2.0 - 0.005 * s + (0.01 if s % 2 else -0.01) for s in steps]
    norms = [0.5 + (0.05 if s % 2 else -0.05) for s in steps]
    losses[at - 1] *= 5.0
    norms[at - 1] = 1500.0
    return steps, losses, norms


def main() -> int:
    steps, losses, norms = spike_series()
    print("peer rules on a 120-step series with one spike at step 80 (loss x5, grad norm 1500)")
    for a in replay(steps, losses, steps, norms):
        print(f"  {a.peer:<10} {a.rule:<16} step {a.step:>4}  value {a.value:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
