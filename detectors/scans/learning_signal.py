"""The learning signal of a reinforcement-learning run, read from its metric
names: rewards, advantages and the policy-gradient loss, and the steps where
every metric of one kind sits at exactly 0.

A policy learns from differences in reward: with group-relative advantages
(GRPO) a group whose samples all score the same gives every sample an
advantage of 0, and a policy-gradient loss of exactly 0 with it. A run whose
rewards, advantages or policy loss are exactly 0 at most steps has nothing to
learn from, whatever its total loss (an entropy or KL term) does.

The names are classified here, from their parts (``critic/advantages/max``,
``actor/pg_loss``, ``rewards/chosen``): the metrics view keeps every name a
reader did not map to a column, so the classes are the detectors' to draw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tunescope.detectors.base import Frames, NoStore

KINDS = ("advantage", "reward", "policy loss")
# parts of a name that make it a measure about a signal, not the signal itself
# (its spread, a timing, a share of zero groups, a clip fraction, an accuracy)
_NOT_SIGNAL = frozenset(
    {"std", "var", "time", "timing", "frac", "fraction", "ratio", "count", "num", "clipfrac",
     "accuracy", "accuracies", "acc", "coef"}
)  # fmt: skip
_PARTS = re.compile(r"[/._\-\s:]+")


def signal_kind(name: str) -> str | None:
    """The kind of learning signal a metric name holds (one of :data:`KINDS`),
    or None: ``critic/advantages/mean`` -> advantage, ``critic/rewards/max`` and
    ``rewards/chosen`` -> reward, ``actor/pg_loss`` and ``policy_loss`` ->
    policy loss; ``reward_std``, ``timing_s/reward`` -> None."""
    parts = [p for p in _PARTS.split(name.lower()) if p]
    if not parts or _NOT_SIGNAL.intersection(parts):
        return None
    if any(p.startswith("advantage") for p in parts):
        return "advantage"
    if "loss" in parts and ("pg" in parts or "policy" in parts):
        return "policy loss"
    if any(p in ("reward", "rewards") for p in parts):
        return "reward"
    return None


@dataclass(frozen=True)
class ZeroSignal:
    """One kind of signal of one run: the steps it was logged at, and those
    where every metric of that kind (across ranks) was exactly 0."""

    kind: str
    names: tuple[str, ...]
    steps: np.ndarray
    zero: np.ndarray  # bool per step


def zero_signals(ctx: Frames) -> dict[str, list[ZeroSignal]]:
    """Per run, each kind of learning signal it logs (in :data:`KINDS` order),
    computed once per source; empty for a source without a store."""
    if "learning-signal" in ctx.memo:
        return ctx.memo["learning-signal"]
    out: dict[str, list[ZeroSignal]] = {}
    try:
        names = ctx.sql(f"SELECT DISTINCT name FROM metrics{ctx.where_runs()}")
    except NoStore:
        names = None
    kinds = {}
    if names is not None and names.height:
        kinds = {n: k for n in names.get_column("name").to_list() if (k := signal_kind(n))}
    if kinds:
        import polars as pl

        df = (
            ctx.metrics(sorted(kinds))
            .filter(pl.col("step").is_not_null() & pl.col("value").is_finite())
            .with_columns(pl.col("name").replace_strict(kinds).alias("kind"))
            .group_by("run_id", "kind", "step")
            .agg((pl.col("value") == 0).all().alias("zero"), pl.col("name").unique())
            .sort("run_id", "kind", "step")
        )
        for (run, kind), g in df.group_by("run_id", "kind", maintain_order=True):
            used = sorted({n for ns in g.get_column("name").to_list() for n in ns})
            sig = ZeroSignal(
                str(kind),
                tuple(used),
                g.get_column("step").to_numpy().astype(np.int64),
                g.get_column("zero").to_numpy().astype(bool),
            )
            out.setdefault(str(run), []).append(sig)
        for sigs in out.values():
            sigs.sort(key=lambda z: KINDS.index(z.kind))
    ctx.memo["learning-signal"] = out
    return out
