"""TS601 on a CUDA out-of-memory crash: the numbers of PyTorch's message,
the remedy the run's configuration makes most likely to help, and whether
the memory series before the crash would have given TS401 a forecast."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from tunescope.detectors.scans.memory_forecast import ForecastOptions, capacity_mb, forecast
from tunescope.detectors.scans.rankwise import trend1
from tunescope.numbers import grouped

_SIZE = r"([\d.]+)\s*(GiB|MiB|KiB|GB|MB|bytes|B)\b"
_FIELDS = {
    "tried_gib": re.compile(r"Tried to allocate " + _SIZE, re.I),
    "total_gib": re.compile(
        r"(?:" + _SIZE + r" total capacity|total capacity of " + _SIZE + r")", re.I
    ),
    "free_gib": re.compile(r"(?:" + _SIZE + r" free\b|of which " + _SIZE + r" is free)", re.I),
    "allocated_gib": re.compile(
        r"(?:" + _SIZE + r" already allocated|" + _SIZE + r" is allocated by PyTorch)", re.I
    ),
    "reserved_gib": re.compile(r"(?:" + _SIZE + r" reserved in total by PyTorch)", re.I),
    "unallocated_gib": re.compile(r"(?:" + _SIZE + r" is reserved by PyTorch but unallocated)"),
}
_UNIT = {"gib": 1.0, "gb": 1.0, "mib": 1 / 1024, "mb": 1 / 1024, "kib": 1 / 1024**2}


def _gib(groups: tuple[str | None, ...]) -> float | None:
    vals = [g for g in groups if g is not None]
    if len(vals) < 2:
        return None
    try:
        value = float(vals[0])
    except ValueError:
        return None
    return value * _UNIT.get(vals[1].lower(), 1 / 1024**3)


def parse(text: str) -> dict[str, float]:
    """The sizes in a CUDA out-of-memory message, in GiB: ``tried``, ``total``
    (capacity), ``free``, ``allocated`` (by PyTorch), ``reserved`` (in total)
    and ``unallocated`` (reserved but unallocated); the message's older form
    (``(GPU 0; 79.15 GiB total capacity; ...)``) and newer one (``GPU 0 has a
    total capacity of ...``) both."""
    out: dict[str, float] = {}
    for key, pattern in _FIELDS.items():
        m = pattern.search(text)
        got = _gib(m.groups()) if m else None
        if got is not None:
            out[key] = got
    if "unallocated_gib" not in out and {"reserved_gib", "allocated_gib"} <= out.keys():
        out["unallocated_gib"] = max(0.0, out["reserved_gib"] - out["allocated_gib"])
    return out


def numbers_text(n: dict[str, float]) -> str:
    """``tried to allocate 2.00 GiB with 0.51 GiB free of 79.15 GiB``."""
    if "tried_gib" not in n:
        return ""
    text = f"tried to allocate {n['tried_gib']:.2f} GiB"
    if "free_gib" in n:
        text += f" with {n['free_gib']:.2f} GiB free"
        if "total_gib" in n:
            text += f" of {n['total_gib']:.2f} GiB"
    if "allocated_gib" in n:
        text += f" ({n['allocated_gib']:.2f} GiB allocated by PyTorch"
        if n.get("unallocated_gib"):
            text += f", {n['unallocated_gib']:.2f} GiB reserved but unallocated"
        text += ")"
    return text


def _cfg(payload: dict[str, Any], *names: str) -> Any:
    cfg = payload.get("config")
    for src in (payload, cfg if isinstance(cfg, dict) else {}):
        for name in names:
            if src.get(name) not in (None, ""):
                return src[name]
    return None


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        return None
    try:
        x = float(v)
    except ValueError:
        return None
    return x if np.isfinite(x) else None


def settings(payload: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run_start that bear on memory: micro-batch, maximum
    length, gradient checkpointing, finetuning type, quantisation, ZeRO stage."""
    ds = _cfg(payload, "deepspeed", "deepspeed_config")
    stage = _num(_cfg(payload, "zero_stage"))
    if isinstance(ds, dict):
        zo = ds.get("zero_optimization")
        stage = _num(zo.get("stage")) if isinstance(zo, dict) else stage
    elif isinstance(ds, str):
        m = re.search(r"(?:zero|z)[_-]?(\d)", ds, re.I)
        stage = float(m.group(1)) if m else stage
    gc = _cfg(
        payload, "gradient_checkpointing", "activation_checkpointing", "recompute_granularity"
    )
    ft = str(_cfg(payload, "finetuning_type", "train_type", "tuner_type") or "").lower()
    quant = _cfg(payload, "quantization_bit", "load_in_4bit", "load_in_8bit", "quant_bits")
    return {
        "micro_batch": _num(
            _cfg(
                payload,
                "per_device_train_batch_size",
                "micro_batch_size",
                "train_micro_batch_size_per_gpu",
                "batch_size",
            )
        ),
        "max_length": _num(
            _cfg(
                payload,
                "cutoff_len",
                "max_seq_length",
                "max_length",
                "seq_length",
                "max_seq_len",
                "model_max_length",
            )
        ),
        "gradient_checkpointing": None if gc is None else gc not in (False, "false", "none", 0),
        "finetuning_type": ft or None,
        "quantized": ft == "qlora" or (quant not in (None, False, 0, "none")),
        "zero_stage": stage,
        "offload": bool(_cfg(payload, "offload_optimizer", "offload_param", "cpu_offload")),
    }


def fix(n: dict[str, float], s: dict[str, Any]) -> tuple[str, str]:
    """(the remedy most likely to help, the suggestion with the others):
    fragmentation first when the reserved-but-unallocated memory would have
    held the allocation; then gradient checkpointing when it is off; ZeRO-3
    for a full finetune without it; a smaller micro-batch; a shorter maximum
    length; QLoRA for a LoRA in 16 bits."""
    steps: list[tuple[str, str]] = []
    tried, spare = n.get("tried_gib"), n.get("unallocated_gib")
    if tried is not None and spare is not None and spare >= tried:
        steps.append(
            (
                "allocator fragmentation",
                f"set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True: {spare:.2f} GiB sat "
                f"reserved but unallocated, more than the {tried:.2f} GiB asked for",
            )
        )
    if s["gradient_checkpointing"] is False:
        steps.append(
            (
                "gradient checkpointing",
                "turn on gradient checkpointing (it is off): activations are recomputed "
                "instead of kept, usually the largest saving for about 30% more compute",
            )
        )
    full = s["finetuning_type"] in ("full", "freeze")
    if full and (s["zero_stage"] or 0) < 3:
        stage = f"ZeRO-{int(s['zero_stage'])}" if s["zero_stage"] else "no ZeRO"
        steps.append(
            (
                "ZeRO-3/offload",
                f"shard the full finetune with ZeRO-3 (with optimizer offload if needed; the "
                f"run used {stage}): weights, gradients and Adam states no longer sit whole "
                "on every GPU",
            )
        )
    mb = s["micro_batch"]
    if mb is not None and mb > 1:
        half = max(1, int(mb) // 2)
        steps.append(
            (
                "smaller micro-batch",
                f"lower the micro-batch from {int(mb)} to {half} and double gradient "
                "accumulation to keep the effective batch",
            )
        )
    ml = s["max_length"]
    if ml is not None and ml >= 2048:
        steps.append(
            (
                "shorter maximum length",
                f"shorten the maximum length from {grouped(ml)} tokens (activations and "
                "logits grow with it), or pack and bucket by length",
            )
        )
    if s["finetuning_type"] == "lora" and not s["quantized"]:
        steps.append(
            ("QLoRA", "load the base model in 4 bits (QLoRA) to free most of the weights' memory")
        )
    if s["gradient_checkpointing"] is None:
        steps.append(("gradient checkpointing", "turn on gradient checkpointing if it is off"))
    if mb is None or mb <= 1:
        steps.append(("smaller micro-batch", "lower the micro-batch or the maximum length"))
    if not full and s["zero_stage"] is None and s["finetuning_type"] is None:
        steps.append(("ZeRO-3/offload", "use ZeRO-3 or CPU offload for a full finetune"))
    first, first_text = steps[0]
    rest = [t for name, t in steps[1:] if name != first][:3]
    sug = first_text[0].upper() + first_text[1:] + "."
    if rest:
        sug += " Else: " + "; ".join(rest) + "."
    return first, sug


def forecast_check(
    steps: np.ndarray,
    ts: np.ndarray,
    peak: np.ndarray,
    alloc: np.ndarray,
    payload: dict[str, Any],
    rank: int,
    total_gib: float | None,
    crash_step: int | None,
    min_points: int,
    p_value: float,
) -> tuple[str, dict[str, Any]]:
    """Whether the memory logged before the crash rose steadily enough for
    TS401's forecast (the same forecast function) to have seen it coming."""
    has_peak = np.isfinite(peak).sum() >= max(10, len(peak) // 2)
    series = peak if has_peak else alloc
    fin = np.isfinite(series)
    n = int(fin.sum())
    cap = capacity_mb(payload, rank) or (total_gib * 1024 if total_gib else None)
    info: dict[str, Any] = {"memory_points": n, "capacity_mb": cap}
    if n == 0:
        return "No memory metrics were logged before the crash, so no forecast was possible.", info
    level = float(np.nanmax(series[fin][-50:]))
    if n < min_points:
        return (
            f"Only {n} memory points were logged before the crash (peak {grouped(level)} MiB): "
            "too few for TS401's forecast.",
            info,
        )
    t = trend1(steps[fin], series[fin], alpha=ForecastOptions.confidence)
    info.update({"slope_mb_per_step": t.slope, "p_value": t.p})
    if not (t.p < p_value and t.lo > 0):
        return (
            f"TS401 could not have forecast it: memory was flat before the crash (peak "
            f"{grouped(level)} MiB, no significant rise over {n} points), so one allocation "
            "larger than usual did it (a long batch, the logits of a long sequence, an "
            "evaluation or a checkpoint save), not a leak.",
            info,
        )
    part = {"mem_peak_mb": peak, "mem_allocated_mb": alloc, "ts": ts}
    s0, s1 = int(steps[fin][0]), int(steps[fin][-1])
    _, fc = forecast(ForecastOptions(), part, steps, s0, s1, {"slope": t.slope}, cap, "", rank, {})
    if fc is None:
        return (
            f"Memory rose {grouped(t.slope)} MiB/step before the crash (a leak TS401 flags), "
            "but the device capacity is unknown, so there was no forecast.",
            info,
        )
    info["forecast"] = fc
    eta = fc["eta_steps"]
    at = f"step {grouped(s1 + eta)}" if np.isfinite(eta) else "no step"
    near = (
        crash_step is not None
        and np.isfinite(eta)
        and abs(s1 + eta - crash_step) <= max(50, 0.2 * max(crash_step, 1))
    )
    verdict = "forecast it" if near or eta == 0 else "seen the rise (forecast " + at + ")"
    return (
        f"TS401 would have {verdict}: memory rose {grouped(t.slope)} MiB/step and at that "
        f"rate reached the {grouped(cap)} MiB device at {at}.",
        info,
    )
