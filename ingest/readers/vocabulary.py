"""Names to meanings: the one vocabulary every reader maps a log's names through.

The exact tables (:data:`CANONICAL`, :data:`TAGS`, :data:`LINE_ALIASES`,
:data:`STEP_KEYS`, :data:`LOSS_KEYS`, :data:`EVAL_PREFIXES`) are what the
specific readers match names against. :func:`meaning` is what the general
reader asks of a name it has never seen: it normalises the spelling (case,
spaces, hyphens, a ``train/`` or ``train_`` prefix, a unit in brackets) and
answers with a column, a scale to the column's unit and a confidence: high
for a name in the tables or a spelling of one, low for a guess from a part
of the name (``lm_loss_scaled`` is probably a loss).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIB_PER_GIB = 1024.0

# Field name -> (canonical metric, scale). Names are matched exactly.
CANONICAL: dict[str, tuple[str, float]] = {
    "loss": ("loss", 1.0),
    "train/loss": ("loss", 1.0),
    "lr": ("lr", 1.0),
    "learning_rate": ("lr", 1.0),
    "train/learning_rate": ("lr", 1.0),
    "train/lr": ("lr", 1.0),
    "grad_norm": ("grad_norm", 1.0),
    "train/grad_norm": ("grad_norm", 1.0),
    "epoch": ("epoch", 1.0),
    "train/epoch": ("epoch", 1.0),
    "memory(GiB)": ("mem_peak_mb", MIB_PER_GIB),
    "vram_allocated": ("mem_allocated_mb", MIB_PER_GIB),
    "vram_reserved": ("mem_reserved_mb", MIB_PER_GIB),
}

# TensorBoard tags -> canonical metric, matched exactly (then :func:`meaning`).
TAGS: dict[str, str] = {
    "loss": "loss",
    "train/loss": "loss",
    "train_loss": "loss",
    "Loss/train": "loss",
    "loss/train": "loss",
    "lr": "lr",
    "learning_rate": "lr",
    "train/learning_rate": "lr",
    "train/lr": "lr",
    "grad_norm": "grad_norm",
    "train/grad_norm": "grad_norm",
    "epoch": "epoch",
    "train/epoch": "epoch",
}

# Names on hand-written step lines -> canonical columns (besides CANONICAL).
LINE_ALIASES: dict[str, tuple[str, float]] = {
    "grad norm": ("grad_norm", 1.0),
    "gradnorm": ("grad_norm", 1.0),
    "iter time (s)": ("step_time_s", 1.0),
    "step_time": ("step_time_s", 1.0),
    "time": ("step_time_s", 1.0),
}

# Keys taken as the step and as the training loss of a record, in this order.
STEP_KEYS = (
    "step",
    "global_step",
    "train/global_step",
    "iteration",
    "current_steps",
    "_step",
    "iter",
    "global_steps",
    "steps",
)
LOSS_KEYS = ("loss", "train/loss", "train_loss", "lm loss", "train loss", "lm_loss")

# Prefixes of evaluation / validation fields (compared in lower case).
EVAL_PREFIXES = (
    "eval_",
    "eval/",
    "val_",
    "val/",
    "valid ",
    "valid_",
    "validation",
    "test ",
    "test_",
)

# ---- the general vocabulary -------------------------------------------------------

CONFIGURED = 2.0  # named in [tool.tunescope.ingest]: above anything guessed
HIGH = 1.0  # the name is a canonical name or a spelling of one
LOW = 0.5  # a guess from part of the name

# Counters a home-made loop names its step by (normalised spelling).
STEP_NAMES = frozenset(
    {"step", "steps", "global_step", "global_steps", "globalstep", "iter", "iters", "iteration",
     "iterations", "it", "batch", "batches", "batch_idx", "rollout", "rollouts", "update",
     "updates", "_step", "current_steps", "train/global_step", "trainer/global_step", "num_steps",
     "optimizer_step", "opt_step", "train_step"}
)  # fmt: skip
# Short names terse loggers print (``s:120 trl:3.21 tel:3.30``): the step, the
# training loss, the test (evaluation) loss.
SHORT_NAMES: dict[str, tuple[str, str]] = {
    "s": ("step", "step"), "trl": ("loss", "column"), "tel": ("eval_loss", "eval"),
}  # fmt: skip
EPOCH_NAMES = frozenset({"epoch", "epochs", "ep", "train/epoch", "trainer/epoch"})

# normalised name -> (column, scale)
_EXACT: dict[str, tuple[str, float]] = {
    **{n: ("loss", 1.0) for n in (
        "loss", "train_loss", "lm_loss", "rl_loss", "total_loss", "avg_loss", "mean_loss",
        "training_loss", "loss_train", "train_lm_loss", "reduced_train_loss", "loss/train",
        "train_total_loss", "policy_loss", "loss_total", "running_loss", "batch_loss",
        "ce_loss", "train_ce_loss", "loss/total", "train/total",
    )},
    **{n: ("lr", 1.0) for n in (
        "lr", "learning_rate", "lr_0", "lr-adamw", "lr_adamw", "current_lr", "lr0", "lr/group0",
        "optim/lr", "lr-adam",
    )},
    **{n: ("grad_norm", 1.0) for n in (
        "grad_norm", "gradnorm", "l2_norm", "total_norm", "gnorm", "grad_l2_norm",
        "gradient_norm", "global_grad_norm", "grad_norm_total", "total_grad_norm",
        "grad_norm/total", "norm",
    )},
    **{n: ("step_time_s", 1.0) for n in (
        "time", "step_time", "step_time_s", "iter_time", "iteration_time", "time_per_iteration",
        "time_per_step", "batch_time", "s/it", "sec/it", "s/iter", "secs_per_iter",
        "dt", "step_duration", "elapsed_time_per_iteration",
    )},
    **{n: ("step_time_s", 0.001) for n in (
        "ms/it", "ms/iter", "step_time_ms", "iter_time_ms", "time_ms", "dt_ms",
        "batch_time_ms",
    )},
    **{n: ("data_time_s", 1.0) for n in ("data_time", "data_time_s", "data_load_time")},
    **{n: ("tokens", 1.0) for n in ("tokens", "num_tokens", "ntokens", "tokens_per_step")},
    **{n: ("epoch", 1.0) for n in EPOCH_NAMES},
    **{n: ("mem_allocated_mb", 1.0) for n in (
        "mem_allocated_mb", "memory_allocated", "mem_allocated", "allocated_memory",
        "gpu_mem_allocated", "memory/allocated", "cuda_mem_allocated", "mem", "memory",
        "gpu_mem", "gpu_memory", "mem_used", "memory_used", "vram",
    )},
    **{n: ("mem_reserved_mb", 1.0) for n in (
        "mem_reserved_mb", "memory_reserved", "mem_reserved", "reserved_memory",
        "gpu_mem_reserved", "memory/reserved", "cuda_mem_reserved",
    )},
    **{n: ("mem_peak_mb", 1.0) for n in (
        "mem_peak_mb", "max_memory_allocated", "max_mem_allocated", "peak_memory", "peak_mem",
        "mem_peak", "max_memory", "max_mem", "memory/max_allocated", "peak_memory_allocated",
        "max_allocated", "peak_allocated", "max_memory_reserved_peak", "peak_gpu_memory",
        "max_gpu_memory", "gpu_peak_memory",
    )},
}  # fmt: skip
# Rates kept as metrics under one name (it/s inverted into step_time_s).
_RATES: dict[str, str] = {
    **{n: "tokens_per_s" for n in (
        "tokens/s", "tok/s", "tokens_per_second", "tokens_per_sec", "tokens/sec", "tps",
        "tokens_per_second_per_gpu", "throughput_tokens", "tgs", "tok/sec",
    )},
    **{n: "samples_per_s" for n in (
        "samples/s", "samples_per_second", "samples/sec", "samples_per_sec", "sps",
        "throughput", "examples/s", "examples_per_second",
    )},
}  # fmt: skip
_PER_SECOND_STEPS = frozenset({"it/s", "its/s", "iter/s", "steps/s", "steps_per_second"})
# Memory units -> MiB
_MEM_UNIT = {
    "b": 1 / (1 << 20), "kb": 1 / 1024, "kib": 1 / 1024, "mb": 1.0, "mib": 1.0, "m": 1.0,
    "gb": MIB_PER_GIB, "gib": MIB_PER_GIB, "g": MIB_PER_GIB,
}  # fmt: skip
_TIME_UNIT = {"ms": 0.001, "s": 1.0, "sec": 1.0, "us": 1e-6, "µs": 1e-6, "min": 60.0}
_BRACKET_UNIT = re.compile(r"[\s_]*[(\[]\s*([a-zA-Zµ/%]+)\s*[)\]]$")
_TRAIN_PREFIX = ("train/", "train_", "training/", "train.", "trainer/", "metrics/", "loss/")
_EVAL_SETTINGS = ("interval", "every", "freq", "frequency", "batches", "batch_size", "_iters")
_EVAL_STEMS = ("eval", "val", "valid", "validation", "test", "dev")


@dataclass(frozen=True)
class Meaning:
    """What a name means: ``column`` is a canonical column of the ``steps``
    view, or a metric name (``kind`` ``"metric"``, ``"eval"``), or ``"step"``
    / ``"epoch"`` for the counters; ``scale`` turns the value into the
    column's unit (a rate given per second is inverted: ``scale`` -1)."""

    column: str
    scale: float = 1.0
    confidence: float = HIGH
    kind: str = "column"  # column | step | metric | eval


def normalise(name: str) -> str:
    """Lower case, spaces and hyphens as ``_``, outer punctuation gone."""
    text = name.strip().strip("\"'[]{}:").strip().lower()
    text = re.sub(r"[\s\-]+", "_", text)
    return text


def is_eval_measure(column: str) -> bool:
    """An evaluation's measure (``eval_loss``), not a setting of the
    evaluation that a config dump prints (``eval_interval``)."""
    return column.startswith("eval_") and not column.endswith(_EVAL_SETTINGS)


def eval_name(name: str) -> str | None:
    """``eval_<rest>`` for an evaluation or validation name, else None."""
    n = normalise(name)
    for stem in _EVAL_STEMS:
        for sep in ("_", "/", "."):
            if n.startswith(stem + sep) and len(n) > len(stem) + 1:
                rest = n[len(stem) + 1 :]
                return "eval_" + rest.replace("/", "_")
    for sep in ("/", "_"):
        for stem in _EVAL_STEMS:
            if n.endswith(sep + stem) and len(n) > len(stem) + 1:  # "loss/val", "loss_valid"
                return "eval_" + n[: -len(stem) - 1].replace("/", "_")
    if n.startswith("validation") and len(n) > 10:
        return "eval_" + n[10:].lstrip("_/")
    return None


def meaning(name: str, unit: str | None = None) -> Meaning:
    """The meaning of ``name`` (with the ``unit`` written after its value, if
    any); a metric under the normalised name when nothing better is known."""
    n = normalise(name)
    if unit is None:
        m = _BRACKET_UNIT.search(n)
        if m is not None and (m.group(1) in _MEM_UNIT or m.group(1) in _TIME_UNIT):
            unit = m.group(1)
            n = n[: m.start()]
    unit = unit.lower() if unit else None
    if n in STEP_NAMES:
        return Meaning("step", 1.0, HIGH, "step")
    short = SHORT_NAMES.get(n)
    if short is not None and unit is None:
        return Meaning(short[0], 1.0, HIGH, short[1])
    ev = eval_name(n)
    if ev is not None:
        return Meaning(ev, 1.0, HIGH, "eval")
    base = n
    for p in _TRAIN_PREFIX:
        if base.startswith(p) and base[len(p) :] and base not in _EXACT:
            base = base[len(p) :]
            break
    if base in _PER_SECOND_STEPS or (unit == "it/s" and base in ("speed", "rate")):
        return Meaning("step_time_s", -1.0, HIGH)
    rate = _RATES.get(base)
    if rate is not None:
        return Meaning(rate, 1.0, HIGH, "metric")
    hit = _EXACT.get(base) or _EXACT.get(n)
    if hit is not None:
        column, scale = hit
        return Meaning(column, scale * _unit_scale(column, unit), HIGH)
    if "/" in base:  # a flattened name: what its last parts say ("time/ms/it")
        tail = meaning(base.split("/", 1)[1], unit)
        if tail.confidence >= HIGH and tail.kind in ("column", "metric"):
            return tail
    # a guess from part of the name
    if base.endswith("loss") and not base.startswith(("eval", "val", "test")):
        return Meaning("loss", 1.0, LOW)
    parts = base.split("/")
    if parts[0] == "loss" and not any(p in _EVAL_STEMS for p in parts):
        return Meaning("loss", 1.0, LOW)  # composer: "loss/train/total"
    if ("grad" in base and "norm" in base) and "adapter" not in base and "lora" not in base:
        return Meaning("grad_norm", 1.0, LOW)
    unit = unit or _unit_of(base)
    if base.startswith(("mem", "gpu_mem", "max_mem", "peak_mem")) and unit in _MEM_UNIT:
        # a memory figure with its unit written: which one from the name
        if "peak" in base or "max" in base:
            column = "mem_peak_mb"
        elif "reserved" in base:
            column = "mem_reserved_mb"
        else:
            column = "mem_allocated_mb"
        return Meaning(column, _unit_scale(column, unit), LOW)
    return Meaning(n.replace(" ", "_"), 1.0, LOW, "metric")


def _unit_of(name: str) -> str | None:
    for suffix in ("_gib", "_gb", "_mib", "_mb", "_kb", "_bytes"):
        if name.endswith(suffix):
            return suffix[1:] if suffix != "_bytes" else "b"
    return None


def _unit_scale(column: str, unit: str | None) -> float:
    """The factor from ``unit`` to the column's own unit (1 when none or unknown)."""
    if unit is None:
        return 1.0
    if column.startswith("mem_"):
        return _MEM_UNIT.get(unit, 1.0)
    if column.endswith("_time_s"):
        return _TIME_UNIT.get(unit.split("/")[0], 1.0)
    return 1.0


def configured(
    step: tuple[str, ...], loss: tuple[str, ...], metrics: dict[str, str]
) -> dict[str, Meaning]:
    """The meanings ``[tool.tunescope.ingest]`` gives names (``step``, ``loss``
    and ``metrics`` renames), above any guess."""
    from tunescope.schema import METRIC_NAMES

    out: dict[str, Meaning] = {}
    for name, column in metrics.items():
        kind = "column" if column in METRIC_NAMES else "metric"
        out[name] = Meaning(column, 1.0, CONFIGURED, kind)
    for name in loss:
        out[name] = Meaning("loss", 1.0, CONFIGURED)
    for name in step:
        out[name] = Meaning("step", 1.0, CONFIGURED, "step")
    return out


def is_step_name(name: str) -> bool:
    return normalise(name) in STEP_NAMES


def is_epoch_name(name: str) -> bool:
    return normalise(name) in EPOCH_NAMES
