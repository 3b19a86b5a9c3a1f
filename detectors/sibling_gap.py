"""TS501 sibling-gap: a run ended clearly worse than its siblings, and the config difference that explains it.

What it flags:
    A run that, at the step count all of its siblings reached, ends with a
    loss clearly above a sibling's that differs from it in one setting only
    (or in settings that always change together, like ``lora_r`` and
    ``lora_alpha = 2r``), or that went NaN/Inf where that sibling did not.
    Siblings are runs of one root on the same base model, dataset and
    finetuning type (``[tool.tunescope.groups]`` overrides the grouping).
    "Clearly" is judged against the group's own spread: the gap must exceed
    ``k`` times the noise (the spread of runs that differ only by seed, when
    the group has such replicates, and each run's own tail noise) and
    ``min-gap`` of the better loss. It stays silent for a group of fewer than
    ``min-runs`` runs, for a group whose replicates spread more than
    ``max-noise`` of its median loss (too noisy to tell), and for runs that
    differ only by seed, name or output directory (noise, not a fix).

Why it matters:
    One run alone cannot say that capacity or the learning rate was the
    limit; a sweep can. The setting that separates a bad run from a better
    sibling with everything else equal is the fix, backed by evidence.

Example:
    ``r=2 (lora_alpha 4) ended at 1.93 at step 200 while its r=32 (lora_alpha
    64) sibling r32-lr1e-3 reached 1.21: a gap of 0.72, 24x the noise of
    0.03.``

Suggestion:
    Change the setting the way the better sibling has it: raise the LoRA rank
    (or alpha, or add target modules), lower or raise the learning rate, train
    the better sibling's target modules. The evidence names every run
    compared with its loss (in a group of more than 50 runs, the run and
    the siblings it was judged against).

Options:
    Listed below with their defaults; set them per detector in the
    configuration file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunescope.detectors.base import Frames
from tunescope.detectors.scans.outcome import Tail, common_step, pooled_sd, tail_loss, window
from tunescope.detectors.scans.siblings import (
    Factor,
    Group,
    Sweep,
    replicates,
    shown,
    sibling_groups,
)
from tunescope.findings import Finding, Severity
from tunescope.numbers import number as fmt

ID = "TS501"
NAME = "sibling-gap"
ACROSS_RUNS = True
"""The engine runs this detector once over every run of the store (not per
batch of runs): it judges runs against each other."""


@dataclass
class Options:
    min_runs: int = 3
    """Runs a group needs before any run in it is judged against the others."""
    k: float = 3.0
    """A gap must exceed k times the noise (replicate spread and the runs' tail noise)."""
    min_gap: float = 0.05
    """...and this fraction of the better run's loss."""
    max_noise: float = 0.2
    """Replicates spread more than this fraction of the median loss: too noisy to tell."""
    tail: float = 0.1
    """Fraction of the common step count whose median loss is a run's outcome."""
    min_points: int = 5
    """Logged loss points a run needs in that tail window to be judged."""


MAX_COMPARED = 50
"""A finding's evidence lists every run of a group of up to this many runs
with its loss; in a larger group, the run and its one-factor siblings (every
run in each of N findings would be N x N entries)."""

# the settings a suggestion knows how to act on, the most telling first
PRIORITY = ("lora_r", "learning_rate", "lora_target", "lora_alpha")


def label(key: str, value: Any) -> str:
    """A setting as a message says it: ``r=8``, ``lr 0.0002``, ``lr 5e-5``, ``lora_alpha 16``."""
    if key == "lora_r":
        return f"r={shown(value)}"
    if key == "learning_rate" and isinstance(value, int | float):
        s = f"{value:.3g}"
        if "e" in s:  # 2e-05 -> 2e-5
            mantissa, exp = s.split("e")
            s = f"{mantissa}e{int(exp)}"
        return f"lr {s}"
    return f"{key} {shown(value)}"


def _one_factor(f: Factor) -> bool:
    """A factor TS501 may blame: one key, or keys that change together (e.g.
    lora_r with lora_alpha = 2r). Two keys that take only two values in the
    group always "change together", so that is no evidence: a bundle of keys
    is one factor only when the group holds it at three values or more."""
    return len(f.keys) == 1 or f.values >= 3


def _main_key(keys: list[str]) -> str:
    return next((k for k in PRIORITY if k in keys), keys[0])


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def suggestion(key: str, mine: Any, better: Any) -> str:
    """What to change, from the setting that separates a run from its better sibling."""
    a, b = _num(mine), _num(better)
    up = a is not None and b is not None and b > a
    if key == "lora_r":
        if up:
            return (
                f"raise the LoRA rank (r={shown(better)} did better here), or lora_alpha, "
                "or add target modules"
            )
        return f"lower the LoRA rank to r={shown(better)}: the larger rank did worse here"
    if key == "learning_rate" and a is not None and b is not None:
        verb = "raise" if up else "lower"
        return f"{verb} the learning rate ({label(key, better)} did better here)"
    if key == "lora_alpha" and a is not None and b is not None:
        return (
            f"{'raise' if up else 'lower'} lora_alpha to {shown(better)} as in the better sibling"
        )
    if key == "lora_target":
        return f"train the better sibling's target modules ({shown(better)})"
    return f"set {key} = {shown(better)} as in the better sibling"


@dataclass
class Member:
    """One run of a group: its settings and its loss curve (mean over ranks)."""

    run: str
    config: dict[str, Any]
    step: np.ndarray
    loss: np.ndarray


def judge(group: str, members: list[Member], opts: Options) -> list[Finding]:
    """TS501's findings for one group of siblings (a pure function: the unit
    tests hand it synthetic groups)."""
    if len(members) < opts.min_runs:
        return []
    lasts = {m.run: int(m.step[-1]) for m in members if len(m.step)}
    at = common_step([s for r, s in lasts.items()])
    if at is None:
        return []
    width = window(at, opts.tail)
    tails: dict[str, Tail] = {}
    for m in members:
        if m.run not in lasts:
            continue
        t = tail_loss(m.step, m.loss, at, width)
        if t is None:
            continue
        if t.diverged or (lasts[m.run] >= at and t.points >= opts.min_points):
            tails[m.run] = t
    if len(tails) < opts.min_runs:
        return []
    configs = {m.run: m.config for m in members if m.run in tails}
    reps = replicates(configs)
    noise, _ = pooled_sd([[tails[r].value for r in rs] for rs in reps])
    finite = [t.value for t in tails.values() if math.isfinite(t.value)]
    if not finite:
        return []
    median = float(np.median(finite))
    if median > 0 and noise > opts.max_noise * median:
        return []
    entries = [{"run": r, "loss": t.value, "diverged_at": t.bad_step} for r, t in tails.items()]
    names = list(tails)
    sweep = Sweep(configs)  # one-factor siblings by lookup: pairwise is cubic in the group
    out = []
    for i, (run, mine) in enumerate(tails.items()):
        if configs[run].get("inject"):
            continue  # broken on purpose (fault injection): its own log says why it is worse
        best: tuple[float, Factor, int] | None = None  # (score, factor, sibling)
        for o, factor in sweep.siblings(i):
            theirs = tails[names[o]]
            if theirs.diverged or not _one_factor(factor):
                continue
            thr = max(
                opts.k * math.sqrt(noise**2 + mine.se**2 + theirs.se**2),
                opts.min_gap * abs(theirs.value),
            )
            gap = mine.value - theirs.value
            if not gap > thr:
                continue
            score = gap / thr if math.isfinite(gap) else math.inf
            if best is None or score > best[0]:
                best = (score, factor, o)
        if best is None:
            continue
        _, factor, other = best
        keys = factor.keys
        key = _main_key(keys)
        # every sibling with the better value of this factor, everything else equal
        same = [
            names[o]
            for o, f in sweep.siblings(i)
            if f is factor and not tails[names[o]].diverged and f.labels[o] == f.labels[other]
        ]
        compared = entries
        if len(entries) > MAX_COMPARED:  # the run and its siblings, not N entries N times
            near = {i} | {o for o, f in sweep.siblings(i) if _one_factor(f)}
            compared = [e for o, e in enumerate(entries) if o in near]
        out.append(_finding(group, run, mine, key, keys, same, tails, configs, at, width, noise,
                            compared, opts))  # fmt: skip
    return out


def _finding(group, run, mine, key, keys, same, tails, configs, at, width, noise, compared, opts):
    mine_cfg, theirs_cfg = configs[run], configs[same[0]]
    extra = [k for k in keys if k != key]

    def describe(cfg: dict[str, Any]) -> str:
        s = label(key, cfg.get(key))
        if extra:
            s += " (" + ", ".join(label(k, cfg.get(k)) for k in extra) + ")"
        return s

    better = float(np.median([tails[o].value for o in same]))
    names = ", ".join(same)
    plural = "siblings" if len(same) > 1 else "sibling"
    their = f"its {describe(theirs_cfg)} {plural} {names}"
    if mine.diverged:
        message = (
            f"{describe(mine_cfg)} diverged (NaN/Inf loss from step {mine.bad_step}) where "
            f"{their} did not (loss {fmt(better)} at step {at})."
        )
    else:
        gap = mine.value - better
        noise_all = math.sqrt(noise**2 + mine.se**2 + max(tails[o].se for o in same) ** 2)
        ratio = f", {fmt(gap / noise_all)}x the noise of {fmt(noise_all)}" if noise_all else ""
        message = (
            f"{describe(mine_cfg)} ended at {fmt(mine.value)} at step {at} while {their} "
            f"reached {fmt(better)}: a gap of {fmt(gap)}{ratio}."
        )
    return Finding(
        run=run,
        detector=ID,
        name=NAME,
        severity=Severity.WARNING,
        step_start=max(at - width + 1, 0),
        step_end=at,
        message=message,
        suggestion=suggestion(key, mine_cfg.get(key), theirs_cfg.get(key)),
        evidence={
            "group": group,
            "key": key,
            "keys": keys,
            "value": mine_cfg.get(key),
            "better_value": theirs_cfg.get(key),
            "step": at,
            "window": width,
            "loss": mine.value,
            "siblings": [{"run": o, "loss": tails[o].value} for o in same],
            "replicate_sd": noise,
            "compared": compared,
        },
    )


def members(ctx: Frames, group: Group) -> list[Member]:
    from tunescope.detectors.scans.siblings import loss_curves, run_settings

    curves = loss_curves(ctx)
    conf = run_settings(ctx)
    return [Member(r, conf.get(r, {}), *curves[r]) for r in group.runs if r in curves]


def run(ctx: Frames, opts: Options) -> list[Finding]:
    out: list[Finding] = []
    for group in sibling_groups(ctx):
        out.extend(judge(group.name, members(ctx, group), opts))
    return out
