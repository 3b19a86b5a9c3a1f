"""Siblings: runs of one root that fine-tune the same base model on the same data.

People sweep the learning rate, the LoRA rank, alpha and the target modules
on one model and one dataset, then ask which setting hurt. Runs are grouped
by (base model, dataset, finetuning type), read from the ``run_start`` event
and its ``config`` under the names each tool uses (:data:`ALIASES`);
``[tool.tunescope.groups]`` overrides the grouping where it is wrong::

    [tool.tunescope.groups]
    qwen-sweep = ["sweep-*", "baseline"]   # run ids or glob patterns

Everything here is pure functions over plain dicts: the grouping, the
settings of a run under canonical names, and the config diff that
``tunescope compare``, the TUI's Compare screen and the HTML report share.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tunescope.detectors.base import Frames

# canonical setting -> the keys tools log it under (first found wins)
ALIASES: dict[str, tuple[str, ...]] = {
    "model": ("model", "model_name_or_path", "base_model_name_or_path", "model_id_or_path",
              "_name_or_path", "model_name"),
    "dataset": ("dataset", "data", "dataset_name", "data_path", "train_file", "dataset_dir"),
    "finetuning_type": ("finetuning_type", "method", "train_type", "sft_type", "tuner_backend"),
    "learning_rate": ("learning_rate", "lr"),
    "lora_r": ("lora_r", "lora_rank", "r"),
    "lora_alpha": ("lora_alpha",),
    "lora_target": ("lora_target", "target_modules", "lora_target_modules"),
    "seed": ("seed",),
}  # fmt: skip
GROUP_KEYS = ("model", "dataset", "finetuning_type")
"""What siblings share."""
NOISE_KEYS = frozenset(
    {"seed", "data_seed", "run_name", "run", "output_dir", "logging_dir", "run_id", "name",
     "inject", "progress", "webhook", "cpu_threads", "stop_at_step", "resume_from_checkpoint",
     "save_steps", "save_total_limit", "logging_steps", "report_to", "hub_model_id", "guard"}
)  # fmt: skip
"""Keys that name, place or seed a run: they differ between any two runs and
explain nothing (a seed is noise, not a fix)."""


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    if isinstance(config, dict):
        out: dict[str, Any] = {}
        for k, v in config.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1] or "value": config}


def _lookup(flat: dict[str, Any], start: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        for table in (start, flat):
            v = table.get(name)
            if v is not None and v != "" and not isinstance(v, dict):
                return v
    return None


def _name(v: Any) -> str:
    """A model or dataset as its last path part, lower case: ``Qwen/Qwen2-7B``
    and ``/models/qwen2-7b/`` are one model."""
    if isinstance(v, list | tuple):
        return ",".join(sorted(_name(x) for x in v))
    s = str(v).strip().rstrip("/")
    return PurePosixPath(s.replace("\\", "/")).name.lower() or s.lower()


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def settings(start: dict[str, Any]) -> dict[str, Any]:
    """One run's settings from its ``run_start`` payload: the flattened
    ``config`` with the keys of :data:`ALIASES` under their canonical names
    (numbers as numbers, targets as a sorted comma list, model and dataset as
    names)."""
    config = start.get("config")
    flat = flatten(config) if isinstance(config, dict) else {}
    out = dict(flat)
    for canon, names in ALIASES.items():
        for n in names:
            out.pop(n, None)
        v = _lookup(flat, start, names)
        if v is None:
            continue
        if canon in ("model", "dataset"):
            v = _name(v)
        elif canon == "finetuning_type":
            v = str(v).lower()
        elif canon == "lora_target":
            v = ",".join(sorted(str(x) for x in v)) if isinstance(v, list | tuple) else str(v)
        elif canon in ("learning_rate", "lora_r", "lora_alpha", "seed"):
            num = _number(v)
            if num is None:
                continue
            v = int(num) if canon in ("lora_r", "seed") and num.is_integer() else num
        out[canon] = v
    if "lora_target" not in out and isinstance(start.get("target_modules"), list):
        out["lora_target"] = ",".join(sorted(str(x) for x in start["target_modules"]))
    return out


@dataclass
class Group:
    """Runs that share a base model, a dataset and a finetuning type."""

    name: str
    runs: list[str]
    shared: dict[str, Any] = field(default_factory=dict)
    """What its runs share (model, dataset, finetuning type as known)."""
    configured: bool = False
    """Made by ``[tool.tunescope.groups]`` rather than guessed."""


def group_runs(
    configs: dict[str, dict[str, Any]], overrides: dict[str, list[str]] | None = None
) -> list[Group]:
    """Siblings among ``configs`` (run id -> :func:`settings`): groups of two
    or more runs. A run matched by a pattern of ``overrides`` (group name ->
    run ids or glob patterns) goes to that group; the others are grouped by
    :data:`GROUP_KEYS`, and a run that knows neither its model nor its
    dataset is grouped with nothing."""
    groups: dict[Any, Group] = {}
    for run in sorted(configs):
        placed = next(
            (g for g, pats in (overrides or {}).items()
             if any(fnmatch.fnmatchcase(run, p) for p in pats)),
            None,
        )  # fmt: skip
        if placed is not None:
            groups.setdefault(("=", placed), Group(placed, [], configured=True)).runs.append(run)
            continue
        s = configs[run]
        shared = {k: s[k] for k in GROUP_KEYS if s.get(k) is not None}
        if "model" not in shared and "dataset" not in shared:
            continue
        key = tuple(shared.get(k) for k in GROUP_KEYS)
        name = " / ".join(str(shared[k]) for k in GROUP_KEYS if k in shared)
        groups.setdefault(key, Group(name, [], shared)).runs.append(run)
    return [g for g in groups.values() if len(g.runs) >= 2]


def shown(v: Any) -> str:
    """A config value as the diff shows it."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:g}" if math.isfinite(v) else str(v)
    if isinstance(v, str):
        return v
    return json.dumps(v, default=str)


def diff_keys(configs: dict[str, dict[str, Any]], *, noise: bool = True) -> list[str]:
    """The keys whose values differ between the runs of ``configs`` (a key
    missing from a run differs from one it holds); ``noise=False`` leaves out
    :data:`NOISE_KEYS`."""
    keys = sorted({k for c in configs.values() for k in c})
    out = []
    for k in keys:
        if not noise and k in NOISE_KEYS:
            continue
        if len({shown(c.get(k)) for c in configs.values()}) > 1:
            out.append(k)
    return out


def replicates(configs: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Sets of two or more runs whose settings differ in :data:`NOISE_KEYS`
    only (the same config trained again, e.g. with another seed)."""
    by: dict[str, list[str]] = {}
    for run, c in configs.items():
        sig = json.dumps({k: shown(v) for k, v in c.items() if k not in NOISE_KEYS}, sort_keys=True)
        by.setdefault(sig, []).append(run)
    return [sorted(r) for r in by.values() if len(r) >= 2]


@dataclass
class Factor:
    """Keys that change together across a group: each one's value decides the
    others' (``lora_r`` with ``lora_alpha = 2r``), so the runs fall into the
    same classes by any of them."""

    keys: list[str]
    """Sorted."""
    labels: tuple[int, ...]
    """Per run, in the order of the configs: the position of the first run
    with its values (equal labels: equal values)."""
    values: int
    """Distinct values the group holds it at."""


class Sweep:
    """The runs of one group indexed by factor, so that the runs differing
    from a run in one factor only are found by lookup, not by comparing every
    pair: for each factor, runs that agree on every other factor share a key.
    Building it costs runs x factors x factors; a run's siblings cost their
    number. The keys of :data:`NOISE_KEYS` are left out, and values compare
    as :func:`shown` shows them (a missing key as ``""``)."""

    def __init__(self, configs: dict[str, dict[str, Any]]) -> None:
        self.runs = list(configs)
        keys = sorted({k for c in configs.values() for k in c} - NOISE_KEYS)
        by_labels: dict[tuple[int, ...], list[str]] = {}
        for k in keys:
            first: dict[str, int] = {}
            labels = tuple(first.setdefault(shown(configs[r].get(k)), i)
                           for i, r in enumerate(self.runs))  # fmt: skip
            by_labels.setdefault(labels, []).append(k)
        # a key held at one value by every run never differs: not a factor
        self.factors = [
            Factor(ks, labels, len(set(labels)))
            for labels, ks in by_labels.items()
            if len(set(labels)) > 1
        ]
        n = len(self.factors)
        sigs = [tuple(f.labels[i] for f in self.factors) for i in range(len(self.runs))]
        self._buckets: list[dict[tuple[int, ...], list[int]]] = [{} for _ in range(n)]
        self._key: list[list[tuple[int, ...]]] = [[] for _ in range(n)]
        for i, sig in enumerate(sigs):
            for j in range(n):
                rest = sig[:j] + sig[j + 1 :]
                self._buckets[j].setdefault(rest, []).append(i)
                self._key[j].append(rest)

    def siblings(self, run: int) -> list[tuple[int, Factor]]:
        """The runs (by position) that differ from run ``run`` in exactly one
        factor, with that factor, in the order of the configs."""
        out: list[tuple[int, Factor]] = []
        for j, f in enumerate(self.factors):
            mine = f.labels[run]
            out.extend((o, f) for o in self._buckets[j][self._key[j][run]]
                       if f.labels[o] != mine)  # fmt: skip
        out.sort(key=lambda p: p[0])
        return out


# ---- read through a detector's Frames -------------------------------------------------


def run_settings(ctx: Frames) -> dict[str, dict[str, Any]]:
    """:func:`settings` of every run of ``ctx`` (shared through its memo)."""
    if "siblings:settings" not in ctx.memo:
        ids = ctx.runs().get_column("run_id").to_list()
        ctx.memo["siblings:settings"] = {r: settings(ctx.run_start(r)) for r in ids}
    return ctx.memo["siblings:settings"]


def sibling_groups(ctx: Frames) -> list[Group]:
    """The groups of siblings among the runs of ``ctx``, with the
    ``[tool.tunescope.groups]`` override it carries."""
    if "siblings:groups" not in ctx.memo:
        ctx.memo["siblings:groups"] = group_runs(run_settings(ctx), ctx.groups)
    return ctx.memo["siblings:groups"]


def loss_curves(ctx: Frames) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per run, (steps, loss averaged over ranks): three columns from DuckDB,
    not the whole steps view (a NaN on any rank stays NaN)."""
    if "siblings:curves" not in ctx.memo:
        df = ctx.sql(
            "SELECT run_id, step, avg(loss) AS loss FROM steps "
            f"{ctx.where_runs() or 'WHERE true'} AND loss IS NOT NULL AND step IS NOT NULL "
            "GROUP BY run_id, step ORDER BY run_id, step"
        )
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for (run,), part in df.group_by(["run_id"], maintain_order=True):
            out[str(run)] = (
                part.get_column("step").to_numpy().astype(np.int64),
                part.get_column("loss").cast(float).to_numpy(),
            )
        ctx.memo["siblings:curves"] = out
    return ctx.memo["siblings:curves"]
