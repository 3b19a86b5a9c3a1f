"""The out-of-memory forecast: when a growing peak reaches the device's
capacity at the current rate, and what TS401's finding says about it (an
error when that comes before the planned end of the run); the device capacity
a run_start names. TS601 asks the same forecast whether a crash could have
been seen coming."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tunescope.detectors.scans.rankwise import trend1
from tunescope.findings import Severity
from tunescope.numbers import grouped as fmt


class Forecasting(Protocol):
    """The options the forecast reads: TS401's ``Options`` or :class:`ForecastOptions`."""

    confidence: float
    headroom: float
    oom_error_hours: float


@dataclass
class ForecastOptions:
    """The forecast's options with TS401's defaults, for a caller that is not
    TS401 (TS601 asks whether a crash could have been forecast)."""

    confidence: float = 0.99
    headroom: float = 0.02
    oom_error_hours: float = 1.0


def capacity_mb(payload: dict[str, Any], rank: int) -> float | None:
    """Device memory in MiB from a run_start payload: ``device_memory_mb`` (a
    number or one per local rank), or ``memory_mb``/``total_memory_mb`` in the
    ``devices`` entries."""

    def pick(v: Any) -> float | None:
        if isinstance(v, list) and v:
            v = v[rank % len(v)]
        if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
            return float(v)
        return None

    cfg = payload.get("config")
    if not isinstance(cfg, dict):
        cfg = {}
    for src in (payload, cfg):
        got = pick(src.get("device_memory_mb"))
        if got:
            return got
    devices = payload.get("devices")
    if isinstance(devices, list) and devices:
        d = devices[rank % len(devices)]
        if isinstance(d, dict):
            for k in ("memory_mb", "total_memory_mb", "device_memory_mb"):
                got = pick(d.get(k))
                if got:
                    return got
    return None


def forecast(
    opts: Forecasting,
    part: dict[str, np.ndarray],
    steps_all: np.ndarray,
    s0: int,
    s1: int,
    best: dict[str, float],
    cap: float | None,
    run_id: str,
    rank: int,
    ended: dict[tuple[str, int], str],
) -> tuple[Severity, dict[str, Any] | None]:
    if cap is None:
        return Severity.WARNING, None
    peak = part["mem_peak_mb"]
    alloc = part["mem_allocated_mb"]
    ts = part["ts"]
    has_peak = np.isfinite(peak).sum() >= max(10, len(peak) // 2)
    series = peak if has_peak else alloc
    fin = np.isfinite(series)
    # A running maximum only rises by definition: its slope says nothing, so
    # the floor's slope is projected from the current peak instead.
    cumulative = has_peak and bool(np.all(np.diff(peak[fin]) >= 0))
    sel = fin & (steps_all >= s0) & (steps_all <= s1)
    slope = best["slope"]
    if has_peak and not cumulative and sel.sum() >= 10:
        t = trend1(steps_all[sel], series[sel], alpha=opts.confidence)
        if t.slope > 0:
            slope = t.slope
    current = float(np.nanmax(series[fin][-50:])) if fin.any() else float("nan")
    limit = cap * (1 - opts.headroom)
    eta_steps = max(0.0, (limit - current) / slope) if slope > 0 else float("inf")
    d_ts, d_st = np.diff(ts), np.diff(steps_all)
    ok = np.isfinite(d_ts) & (d_st > 0) & (d_ts > 0)
    step_s = float(np.median(d_ts[ok] / d_st[ok])) if ok.any() else float("nan")
    eta_h = eta_steps * step_s / 3600 if np.isfinite(step_s) else float("nan")
    info = {
        "capacity_mb": cap,
        "peak_mb": current,
        "peak_slope_mb_per_step": slope,
        "peak_is_running_max": cumulative,
        "eta_steps": eta_steps,
        "eta_hours": eta_h,
        "seconds_per_step": step_s,
        "run_status": ended.get((run_id, rank), ""),
    }
    return Severity.WARNING, info


def forecast_text(
    sev: Severity,
    fc: dict[str, Any] | None,
    cap: float | None,
    run_row: dict[str, Any],
    ev: dict[str, Any],
    opts: Forecasting,
    cpu: bool = False,
) -> tuple[Severity, str]:
    if fc is None:
        ev["forecast"] = None
        if cpu:
            return sev, (
                "The host's memory size is not in run_start (device_memory_mb), so there is "
                "no out-of-memory forecast."
            )
        return sev, (
            "The device capacity is unknown (no device_memory_mb in run_start), so there "
            "is no out-of-memory forecast."
        )
    ev["forecast"] = fc
    total = run_row.get("total_steps")
    last = run_row.get("last_step")
    status = fc.get("run_status") or ""
    remaining = (int(total) - int(last)) if total and last is not None else None
    ev["forecast"]["steps_left_in_run"] = remaining
    eta, hours = fc["eta_steps"], fc["eta_hours"]
    if eta == 0:
        text = (
            f"The peak ({fmt(fc['peak_mb'])} MiB) is already at the {fmt(cap)} MiB device "
            "limit (less headroom)."
        )
        return (Severity.ERROR if status != "completed" else sev), text
    if not np.isfinite(eta):
        return sev, f"The peak is not rising; the device has {fmt(cap)} MiB."
    when = f"about {fmt(eta)} steps" + (f" ({hours:.1f} h)" if np.isfinite(hours) else "")
    text = f"At this rate the peak reaches the {fmt(cap)} MiB device in {when}"
    running = status not in ("completed",)
    if remaining is not None and remaining > 0 and eta < remaining and running:
        return Severity.ERROR, text + f", before the planned end ({remaining:,} steps left)."
    if running and remaining is None and np.isfinite(hours) and hours < opts.oom_error_hours:
        return Severity.ERROR, text + "."
    if remaining is not None and remaining > 0:
        return sev, text + f"; the run has {remaining:,} steps left."
    return sev, text + "."
