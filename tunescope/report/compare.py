"""``tunescope compare``: runs side by side, and which settings track the outcome.

:func:`compare` reads, for the chosen runs of a store: the settings that
differ between them (the config diff shared with the TUI's Compare screen
and the HTML report), the loss at matched steps and at the step all of them
reached (:mod:`tunescope.detectors.scans.outcome`), tokens seen, the median time
per step and the peak memory; then, for each differing setting with numeric
values, Spearman's rank correlation with the final loss over the runs, with
the number of runs (no claim from fewer than :data:`MIN_RUNS`).
:func:`text` and :func:`as_json` print it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from tunescope.detectors.base import Frames
from tunescope.detectors.scans.outcome import common_step, loss_at, spearman, tail_loss, window
from tunescope.detectors.scans.siblings import (
    NOISE_KEYS,
    diff_keys,
    loss_curves,
    run_settings,
    shown,
    sibling_groups,
)
from tunescope.findings import jsonable
from tunescope.numbers import number as fmt

MIN_RUNS = 3
"""Runs a rank correlation needs before it is printed as a trend."""
MATCHED = (0.25, 0.5, 0.75)
"""Fractions of the common step count where every run's loss is shown."""
HIDDEN = frozenset({"run_name", "run", "name", "output_dir", "logging_dir"})
"""Keys that differ between any two runs by construction: not shown in the diff."""


@dataclass
class Comparison:
    runs: list[str]
    keys: list[str]
    """The settings that differ between the runs (the diff), in display order."""
    configs: dict[str, dict[str, Any]]
    step: int | None
    """The step every run reached (the outcome's step)."""
    width: int = 0
    matched: list[int] = field(default_factory=list)
    table: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per run: loss at each matched step, ``final`` (tail median at ``step``),
    ``diverged_at``, ``last_step``, ``tokens``, ``step_time_s``, ``peak_mb``."""
    trends: list[dict[str, Any]] = field(default_factory=list)
    """Per numeric differing key: ``key``, ``n`` (runs), ``rho`` (None: too few runs)."""
    groups: dict[str, list[str]] = field(default_factory=dict)
    """The sibling groups among the runs, by name."""


def _systems(ctx: Frames, runs: list[str]) -> dict[str, dict[str, Any]]:
    where = ctx.where_runs() if ctx.run_ids is not None else ""
    df = ctx.sql(
        "SELECT run_id, sum(tokens) AS tokens, median(step_time_s) AS step_time_s, "
        "max(coalesce(mem_peak_mb, mem_reserved_mb, mem_allocated_mb)) AS peak_mb "
        f"FROM steps{where} GROUP BY run_id"
    )
    return {r["run_id"]: r for r in df.iter_rows(named=True) if r["run_id"] in runs}


def compare(ctx: Frames, runs: list[str] | None = None, by: list[str] | None = None) -> Comparison:
    """The comparison of ``runs`` (default: every run of ``ctx``); ``by``
    limits the settings shown and correlated to these keys (in this order)."""
    configs_all = run_settings(ctx)
    runs = sorted(configs_all) if runs is None else list(runs)
    configs = {r: configs_all.get(r, {}) for r in runs}
    if by:
        keys = list(by)
    else:
        keys = [k for k in diff_keys(configs) if k not in HIDDEN]
        # the settings a sweep changes first, names and seeds last
        keys.sort(key=lambda k: (k in NOISE_KEYS, k))
    curves = loss_curves(ctx)
    lasts = {r: int(curves[r][0][-1]) for r in runs if r in curves and len(curves[r][0])}
    at = common_step(list(lasts.values()))
    out = Comparison(runs, keys, configs, at)
    out.groups = {
        g.name: [r for r in g.runs if r in runs]
        for g in sibling_groups(ctx)
        if len([r for r in g.runs if r in runs]) >= 2
    }
    systems = _systems(ctx, runs)
    if at is not None:
        out.width = window(at)
        out.matched = sorted({max(1, round(at * f)) for f in MATCHED})
    for r in runs:
        row: dict[str, Any] = {"last_step": lasts.get(r)}
        if r in curves and at is not None:
            step, loss = curves[r]
            for s in out.matched:
                row[f"loss@{s}"] = loss_at(step, loss, s)
            tail = tail_loss(step, loss, at, out.width)
            row["final"] = tail.value if tail is not None else None
            row["diverged_at"] = tail.bad_step if tail is not None else None
        sysrow = systems.get(r, {})
        for k in ("tokens", "step_time_s", "peak_mb"):
            row[k] = sysrow.get(k)
        out.table[r] = row
    finals = {
        r: row["final"]
        for r, row in out.table.items()
        if isinstance(row.get("final"), float) and math.isfinite(row["final"])
    }
    for k in keys:
        if k in NOISE_KEYS:
            continue  # a seed or a save interval is not a setting to tune
        pairs = [
            (float(configs[r][k]), finals[r])
            for r in finals
            if isinstance(configs[r].get(k), int | float) and not isinstance(configs[r][k], bool)
        ]
        if len({p[0] for p in pairs}) < 2:
            continue
        n = len(pairs)
        rho = spearman([p[0] for p in pairs], [p[1] for p in pairs]) if n >= MIN_RUNS else None
        out.trends.append({"key": k, "n": n, "rho": rho})
    return out


# ---- output ----------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return fmt(v)
    return shown(v)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    for r in rows:
        line.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return line


def text(c: Comparison) -> str:
    """The comparison as plain text tables (stdout is data)."""
    out: list[str] = []
    for name, members in c.groups.items():
        out.append(f"group {name}: {len(members)} runs")
    if c.step is not None:
        out.append(
            f"loss compared at step {c.step} (median of steps {c.step - c.width + 1}-{c.step})"
        )
    out.append("")
    if c.keys:
        out.append(f"config: {len(c.keys)} setting(s) differ")
        rows = [[r, *(shown(c.configs[r].get(k)) or "-" for k in c.keys)] for r in c.runs]
        out += _table(["run", *c.keys], rows)
    else:
        out.append("config: no setting differs")
    out.append("")
    head = ["run", *(f"loss@{s}" for s in c.matched), "final", "tokens", "s/step", "peak MB"]
    rows = []
    for r in c.runs:
        row = c.table.get(r, {})
        final = _cell(row.get("final"))
        if row.get("diverged_at") is not None:
            final = f"NaN@{row['diverged_at']}"
        tokens = row.get("tokens")
        rows.append(
            [
                r,
                *(_cell(row.get(f"loss@{s}")) for s in c.matched),
                final,
                "-" if tokens is None else f"{tokens:,.0f}",
                _cell(row.get("step_time_s")),
                "-" if row.get("peak_mb") is None else f"{row['peak_mb']:,.0f}",
            ]
        )
    out += _table(head, rows)
    out.append("")
    if c.trends:
        out.append("what tracks the final loss (Spearman's rank correlation over the runs):")
        for t in c.trends:
            if t["rho"] is None:
                out.append(f"  {t['key']}: {t['n']} runs, too few to say")
                continue
            rho = t["rho"]
            way = "higher, lower loss" if rho < 0 else "higher, higher loss"
            strength = "strong" if abs(rho) >= 0.7 else ("weak" if abs(rho) >= 0.3 else "none")
            out.append(
                f"  {t['key']}: rho {rho:+.2f} over {t['n']} runs ({strength}"
                + (f": {way})" if strength != "none" else ")")
            )
    else:
        out.append("what tracks the final loss: no numeric setting differs")
    return "\n".join(out) + "\n"


def as_json(c: Comparison) -> str:
    doc = {
        "runs": c.runs,
        "groups": c.groups,
        "step": c.step,
        "window": c.width,
        "keys": c.keys,
        "config": {r: {k: c.configs[r].get(k) for k in c.keys} for r in c.runs},
        "outcomes": c.table,
        "trends": c.trends,
    }
    return json.dumps(jsonable(doc), indent=1, sort_keys=False) + "\n"
