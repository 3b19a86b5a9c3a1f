"""TS103 plateau: the loss is not moving, is degenerate (exactly 0), or has no learning signal.

What it flags:
    "No learning": over a whole run of at least 20 logged points the loss
    never moved: its Theil-Sen change from start to end is under 2%, its
    first and last points agree within 2%, and its spread is tiny, while the
    learning rate is above 0 (or a learning rate of 0 throughout, named as
    such; a dead LoRA adapter is TS201's finding, which then stands for this
    one). "Degenerate": a loss of exactly 0 for
    at least 10 consecutive points (not for RL-style objectives whose loss
    is 0 by construction). "No downward trend" (info, a hint): a noisy loss
    (robust spread up to 30%) whose Theil-Sen slope has a 99% confidence
    interval that holds 0 over the whole run of at least 20 points while the
    learning rate is above 0 (or not logged). "Never learned" (warning): the
    same over a long run (at least 300 steps, past warmup) with a learning
    rate of at least 1e-6 logged (or none logged: the message then says
    so), where the 99% bound on the fall is under 5%: at that length and noise
    a fall of a few percent would show, so the run spent its compute without
    learning. Short runs and runs still warming up stay at the hint. A log
    without a learning rate, or whose gradient norm reads 0 at every step,
    is judged on its loss alone, and the finding names what is missing.
    "No learning signal" (warning): a reinforcement-learning run whose
    advantages, rewards or policy-gradient loss (metrics named so:
    ``critic/advantages/max``, ``rewards/chosen``, ``actor/pg_loss``; not their
    spread or timing) are exactly 0, every metric of the kind at once, at 80%
    or more of at least 10 logged steps: the policy has nothing to learn from,
    whatever its total loss (an entropy or KL term) does.

Why it matters:
    A fine-tune whose loss never moves is not training: a learning rate too
    low for LoRA, an optimizer that is not stepping, a scheduler stuck at 0,
    or data that does not match the labels. A loss of exactly 0 means every
    label is masked or the data was memorised. An RL run whose samples all
    score the same (all 0: a reward the responses never earn) gets advantages
    of 0 and no gradient from its policy loss.

    Not a plateau: a loss that fell first and flattened later (continued
    pre-training, the end of a schedule).

Example:
    ``loss stayed at 2.31 (change -0.4% over 400 steps, spread 0.6%) with
    lr 2e-06 > 0: the model is not learning.``

Suggestion:
    Raise the learning rate (LoRA typically needs about 10x the full
    fine-tuning rate); check the optimizer holds the trainable parameters and
    the scheduler does not sit at 0; check that labels are not all masked
    (-100) and match the inputs.

Options:
    Listed below with their defaults; set them per detector in the
    configuration file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunescope.detectors.base import Frames
from tunescope.detectors.scans.learning_signal import zero_signals
from tunescope.detectors.scans.series import Series, run_series
from tunescope.detectors.scans.stats import incidents, warmup_mask
from tunescope.detectors.scans.stats import trend_np as trend
from tunescope.findings import Finding, Severity
from tunescope.numbers import number as fmt

ID = "TS103"
NAME = "plateau"


@dataclass
class Options:
    min_points: int = 20
    """Logged points needed before a run can be called flat."""
    max_change: float = 0.02
    """Largest Theil-Sen change over the run (fraction) that still counts as flat."""
    max_spread: float = 0.03
    """Largest robust spread of log-loss (IQR-sigma) that counts as flat."""
    zero_points: int = 10
    """Consecutive points of a loss of exactly 0 that make it degenerate."""
    noisy_confidence: float = 0.99
    """A noisy loss is flat when the Theil-Sen slope's confidence interval at
    this level holds 0 over the whole run (no downward trend at all)."""
    noisy_max_spread: float = 0.3
    """...and its robust spread (log-loss IQR-sigma) is at most this: a loss
    that swings more is unstable or diverging (TS101/TS102), not flat."""
    never_learned_steps: int = 300
    """A noisy loss with no downward trend over at least this many steps ..."""
    never_learned_lr: float = 1e-6
    """... with a median logged learning rate of at least this ..."""
    never_learned_fall: float = 0.05
    """... and a fall bounded under this fraction (the confidence interval's
    far end) is a warning: the whole run did not learn."""
    signal_points: int = 10
    """Logged steps of a learning signal (rewards, advantages, a policy-gradient
    loss) needed to judge it."""
    signal_zero: float = 0.8
    """A learning signal exactly 0 (every metric of its kind at that step: mean,
    max and min alike) at this share of its steps or more: the run had nothing
    to learn from (warning). 0 turns the check off."""

    def __post_init__(self) -> None:
        if self.min_points < 5 or self.zero_points < 2:
            raise ValueError("min_points must be >= 5 and zero_points >= 2")


def _rl_runs(ctx: Frames) -> set[str]:
    """Runs whose metrics look like an RL/preference objective (rewards, KL)."""
    df = ctx.sql(
        "SELECT DISTINCT run_id FROM metrics WHERE name ILIKE '%reward%' "
        "OR name ILIKE '%kl%' OR name ILIKE '%chosen%'"
    )
    return set(df.get_column("run_id").to_list()) if df.height else set()


_SIGNAL_WHY = {
    "advantage": "with every advantage at 0 the policy gradient is 0",
    "reward": "no sample earned a reward, so there is nothing to reinforce",
    "policy loss": "a policy-gradient loss of exactly 0 has no gradient",
}


def _no_signal(ctx: Frames, opts: Options) -> list[Finding]:
    """A warning per run whose learning signal (advantages, rewards, a
    policy-gradient loss) is exactly 0 at ``signal_zero`` of its steps or more."""
    if opts.signal_zero <= 0:
        return []
    out = []
    for run, sigs in zero_signals(ctx).items():
        dead = [
            z
            for z in sigs
            if len(z.steps) >= opts.signal_points and z.zero.mean() >= opts.signal_zero
        ]
        if not dead:
            continue
        parts = [
            f"every {z.kind} metric ({', '.join(z.names)}) was exactly 0 at "
            f"{int(z.zero.sum())} of {len(z.steps)} logged steps"
            if i == 0
            else f"every {z.kind} metric ({', '.join(z.names)}) at {int(z.zero.sum())} of "
            f"{len(z.steps)}"
            for i, z in enumerate(dead)
        ]
        a = min(int(z.steps[z.zero][0]) for z in dead)
        b = max(int(z.steps[z.zero][-1]) for z in dead)
        out.append(
            Finding(
                run,
                ID,
                NAME,
                Severity.WARNING,
                a,
                b,
                "no learning signal: "
                + ", and ".join(parts)
                + f" (steps {a}-{b}): "
                + _SIGNAL_WHY[dead[0].kind]
                + ", so the policy cannot learn whatever its loss shows.",
                "Check that the reward function can score these responses (a format or parse check "
                "that never passes, responses cut at the length limit before an answer); start from "
                "easier prompts or a model that solves some; with group-relative advantages (GRPO) "
                "sample more responses per prompt so that some differ.",
                rank=None,
                evidence={
                    "kind": "no-signal",
                    "signals": {z.kind: [int(z.zero.sum()), len(z.steps)] for z in dead},
                    "metrics": [n for z in dead for n in z.names],
                },
            )
        )
    return out


def run(ctx: Frames, opts: Options) -> list[Finding]:
    out = _no_signal(ctx, opts)
    silent = {f.run for f in out}  # one TS103 finding per run: no signal is the cause
    rl = None
    for s in run_series(ctx):
        if s.run in silent:
            continue
        loss, step = s.loss, s.step
        fin = np.isfinite(loss)
        zero = fin & (loss == 0)
        zinc = [(a, b) for a, b in incidents(zero) if b - a + 1 >= opts.zero_points]
        if zinc:
            if rl is None:
                rl = _rl_runs(ctx)
            a, b = zinc[0]
            # loss 0 with a NaN grad norm is a masked NaN (TS001), not a degenerate loss
            gseg = s.grad_norm[a : b + 1]
            masked_nan = bool(np.isfinite(s.grad_norm).any() and np.isnan(gseg).all())
            if s.run not in rl and not (loss[fin] < 0).any() and not masked_nan:
                out.append(
                    Finding(
                        s.run,
                        ID,
                        NAME,
                        Severity.WARNING,
                        int(step[a]),
                        int(step[b]),
                        f"loss is exactly 0 for {b - a + 1} points (steps {step[a]}-{step[b]}): "
                        "every label is masked, or the model memorised a tiny data set.",
                        "Check that labels are not all -100 (prompt masking, truncation cutting "
                        "off every response); add data or stop earlier if it memorised.",
                        rank=None,
                        evidence={"kind": "degenerate", "points": int(b - a + 1)},
                    )
                )
                continue
        pos = fin & (loss > 0)
        if pos.sum() < opts.min_points or not (loss[fin] > 0).all():
            continue
        lr_all = s.lr
        if np.isfinite(lr_all).sum() >= 2 and warmup_mask(lr_all)[np.isfinite(lr_all)][-1]:
            continue  # still warming up at the last point: too early to call it flat
        y = np.log(loss[pos])
        x = step[pos].astype(float)
        flat = _flat(x, y, opts)
        if flat is None:
            noisy = _noisy_flat(s, x, y, opts)
            if noisy is not None:
                out.append(noisy)
            continue
        change, spread = flat
        lr = s.lr[np.isfinite(s.lr)]
        lr_med = float(np.median(lr)) if len(lr) else None
        if lr_med is not None and lr_med <= 0:
            why = "the learning rate is 0 throughout: the scheduler or optimizer never steps"
            sug = (
                "Fix the learning-rate schedule (a warmup from 0 that never rises, a scheduler "
                "built before the optimizer); check the optimizer holds the trainable parameters."
            )
        else:
            lr_txt = f" with lr {fmt(lr_med)}" if lr_med is not None else ""
            why = f"the model is not learning{lr_txt}" + _missing(s, lr_med)
            sug = (
                "Raise the learning rate (LoRA typically needs ~10x the full fine-tuning rate); "
                "check the optimizer steps and holds the trainable parameters; check the labels "
                "match the inputs and are not mostly masked."
            )
        out.append(
            Finding(
                s.run,
                ID,
                NAME,
                Severity.WARNING,
                int(x[0]),
                int(x[-1]),
                f"loss stayed at {fmt(float(np.exp(np.median(y))))} over {len(y)} points "
                f"(change {change * 100:+.1f}% from step {int(x[0])} to {int(x[-1])}, "
                f"spread {spread * 100:.1f}%): {why}.",
                sug,
                rank=None,
                evidence={
                    "kind": "no-learning",
                    "change": change,
                    "spread": float(spread),
                    "points": len(y),
                    "lr_median": lr_med,
                },
            )
        )
    return out


def _missing(s: Series, lr_med: float | None) -> str:
    """What the log lacks to say why the loss did not move: a learning rate,
    and gradient norms that are not all 0."""
    gn = s.grad_norm[np.isfinite(s.grad_norm)]
    lacks = []
    if lr_med is None:
        lacks.append("no learning rate is logged, so one of 0 or one too low cannot be told apart")
    if len(gn) and (gn == 0).all():
        lacks.append(
            "its gradient norm reads 0 at every logged step: not measured, or no gradient "
            "reaches the weights"
        )
    return " (" + "; ".join(lacks) + ")" if lacks else ""


def _flat(x: np.ndarray, y: np.ndarray, opts: Options) -> tuple[float, float] | None:
    """(change, spread) when the log-loss never moved: the ends agree, the
    spread is tiny and the Theil-Sen change is small; else None."""
    k = max(3, len(y) // 10)
    first, last = np.median(y[:k]), np.median(y[-k:])
    if abs(last - first) > np.log1p(opts.max_change):
        return None
    q25, q75 = np.percentile(y, [25, 75])
    spread = (q75 - q25) / 1.349
    if spread > opts.max_spread:
        return None
    t = trend(x, y)
    change = float(np.expm1(t.slope * (x[-1] - x[0])))
    if abs(change) > opts.max_change:
        return None
    return change, float(spread)


def _noisy_flat(s: Series, x: np.ndarray, y: np.ndarray, opts: Options) -> Finding | None:
    """Info: a noisy loss with no downward trend over the whole run while the
    lr is above 0 (the Theil-Sen interval of the slope holds 0)."""
    lr = s.lr[np.isfinite(s.lr)]
    lr_med = float(np.median(lr)) if len(lr) else None
    if lr_med is not None and lr_med <= 0:
        return None  # a learning rate of 0: the no-learning rule's case, not a hint
    q25, q75 = np.percentile(y, [25, 75])
    spread = float((q75 - q25) / 1.349)
    if spread > opts.noisy_max_spread:
        return None
    t = trend(x, y, alpha=opts.noisy_confidence)
    if not t.lo <= 0 <= t.hi:
        return None
    span = x[-1] - x[0]
    lo, hi = float(np.expm1(t.lo * span)), float(np.expm1(t.hi * span))
    level = float(np.exp(np.median(y)))
    # long, past warmup, a real learning rate (or none logged: the loss alone
    # is the evidence then), and a fall bounded to a few percent: not a hidden
    # slow fall but a run that never learned
    never = (
        span >= opts.never_learned_steps
        and (lr_med is None or lr_med >= opts.never_learned_lr)
        and -lo < opts.never_learned_fall
    )
    verdict = (
        f": the model did not learn; at {opts.noisy_confidence:.0%} confidence the loss fell "
        f"less than {-lo * 100:.1f}% over {int(span):,} steps, so the run's compute was wasted"
        + _missing(s, lr_med)
        + "."
        if never
        else ": the model may not be learning. A hint: noise this large can hide a slow fall."
    )
    return Finding(
        s.run,
        ID,
        NAME,
        Severity.WARNING if never else Severity.INFO,
        int(x[0]),
        int(x[-1]),
        f"loss shows no downward trend over {len(y)} points (around {fmt(level)}, noise "
        f"{spread * 100:.0f}%; change from step {int(x[0])} to {int(x[-1])} between "
        f"{lo * 100:+.0f}% and {hi * 100:+.0f}% at {opts.noisy_confidence:.0%} confidence)"
        + (f" with lr {fmt(lr_med)}" if lr_med is not None else "" if never else " (no lr logged)")
        + verdict,
        "Check the learning rate is high enough (LoRA typically needs ~10x the full "
        "fine-tuning rate) and that the labels match the inputs; compare with an eval loss.",
        rank=None,
        evidence={
            "kind": "never-learned" if never else "noisy-flat",
            "change_lo": lo,
            "change_hi": hi,
            "spread": spread,
            "points": len(y),
            "lr_median": lr_med,
        },
    )
