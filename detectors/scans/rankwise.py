"""Helpers shared by the per-rank systems detectors (TS201, TS301, TS302, TS401):
steps to leave out (eval and checkpoint work), one finding for an incident seen
on every rank, and number formatting for messages.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from tunescope.findings import Finding, Severity

if TYPE_CHECKING:
    import polars as pl

    from tunescope.detectors.base import Frames


def on_cpu(payload: dict[str, Any]) -> bool:
    """Whether a ``run_start`` payload says the run trained on a CPU."""
    if str(payload.get("device", "")).lower().startswith("cpu"):
        return True
    devices = payload.get("devices")
    if isinstance(devices, list) and devices:
        d = devices[0]
        name = d.get("name", d.get("type", "")) if isinstance(d, dict) else d
        return str(name).lower().startswith("cpu")
    return False


def see(detector_id: str) -> str:
    """The tail every message ends with."""
    return f" See `tunescope explain {detector_id}`."


def finding(
    *,
    run_id: str,
    detector_id: str,
    name: str,
    sev: Severity,
    step_start: int | None,
    step_end: int | None,
    message: str,
    suggestion: str,
    rank: int | None = None,
    evidence: dict[str, Any] | None = None,
) -> Finding:
    """A :class:`Finding` whose message ends with :func:`see` (the tail every
    systems detector's message carries)."""
    return Finding(
        run_id,
        detector_id,
        name,
        sev,
        step_start,
        step_end,
        message + see(detector_id),
        suggestion,
        rank=rank,
        evidence={} if evidence is None else evidence,
    )


def special_steps(
    ctx: Frames, after: int = 1, kinds: tuple[str, ...] = ("eval", "checkpoint")
) -> dict[str, np.ndarray]:
    """Per run, the sorted steps at which any rank evaluated or checkpointed
    (or other event ``kinds``), plus the ``after`` steps that follow each
    (whose timings and memory can still carry that work, depending on where
    the trainer logs it)."""
    key = f"rankwise:special:{after}:{','.join(kinds)}"
    if key in ctx.memo:
        return ctx.memo[key]
    ev = ctx.events(list(kinds))
    out: dict[str, np.ndarray] = {}
    if ev.height:
        for run_id, grp in ev.group_by("run_id"):
            base = grp["step"].drop_nulls().unique().to_numpy()
            parts = [base + k for k in range(after + 1)]
            out[str(run_id[0] if isinstance(run_id, tuple) else run_id)] = np.unique(
                np.concatenate(parts)
            )
    ctx.memo[key] = out
    return out


def first_event_step(ctx: Frames, kind: str) -> dict[str, int]:
    """Per run, the first step of an event of ``kind`` (any rank)."""
    key = f"rankwise:first:{kind}"
    if key in ctx.memo:
        return ctx.memo[key]
    ev = ctx.events([kind])
    out: dict[str, int] = {}
    if ev.height:
        import polars as pl

        agg = ev.drop_nulls("step").group_by("run_id").agg(pl.col("step").min().alias("first"))
        out = {r: int(s) for r, s in agg.iter_rows()}
    ctx.memo[key] = out
    return out


def run_ended(ctx: Frames) -> dict[tuple[str, int], str]:
    """(run, rank) -> status of its last ``run_end`` event."""
    key = "rankwise:ended"
    if key in ctx.memo:
        return ctx.memo[key]
    out: dict[tuple[str, int], str] = {}
    for row in ctx.events(["run_end"]).iter_rows(named=True):
        try:
            status = json.loads(row["payload"]).get("status", "")
        except (TypeError, ValueError):
            status = ""
        out[(row["run_id"], int(row["rank"]))] = str(status)
    ctx.memo[key] = out
    return out


def collapse_ranks(findings: list[Finding], ranks: dict[str, list[int]]) -> list[Finding]:
    """One finding per incident: when every rank of a run (two or more) has
    a finding of the same kind (``evidence['kind']``) over overlapping steps,
    they become one run-wide finding (rank None) on the first rank's numbers,
    with the per-rank step ranges in evidence."""
    groups: dict[tuple[str, str, str], list[Finding]] = {}
    rest: list[Finding] = []
    for f in findings:
        if f.rank is None:
            rest.append(f)
            continue
        groups.setdefault((f.run, f.detector, str(f.evidence.get("kind", ""))), []).append(f)
    out = list(rest)
    for (run, _, _), group in groups.items():
        run_ranks = ranks.get(run, [])
        by_rank: dict[int, list[Finding]] = {}
        for f in group:
            by_rank.setdefault(int(f.rank), []).append(f)  # type: ignore[arg-type]  # rank-less ones set aside above
        if len(run_ranks) < 2 or set(by_rank) != set(run_ranks):
            out.extend(group)
            continue
        used: set[int] = set()
        first = by_rank[run_ranks[0]]
        for f in first:
            lo, hi = f.step_start or 0, f.step_end or 0
            matched = [f]
            for r in run_ranks[1:]:
                hit = next(
                    (
                        g
                        for g in by_rank[r]
                        if id(g) not in used
                        and (g.step_start or 0) <= hi + 1
                        and (g.step_end or 0) >= lo - 1
                    ),
                    None,
                )
                if hit is None:
                    break
                matched.append(hit)
            if len(matched) != len(run_ranks):
                continue
            used.update(id(g) for g in matched)
            worst = max(matched, key=lambda g: g.severity.level)
            starts = [g.step_start for g in matched if g.step_start is not None]
            ends = [g.step_end for g in matched if g.step_end is not None]
            ev = dict(worst.evidence)
            ev["ranks"] = {str(g.rank): [g.step_start, g.step_end] for g in matched}
            msg = re.sub(r"^rank \d+\b", "every rank", worst.message)
            out.append(
                replace(
                    worst,
                    rank=None,
                    message=msg,
                    step_start=min(starts) if starts else None,
                    step_end=max(ends) if ends else None,
                    evidence=ev,
                )
            )
        out.extend(g for g in group if id(g) not in used)
    return out


def payload_number(payload: dict[str, Any], *names: str) -> float | None:
    """The first of ``names`` in a run_start payload (or its ``config``) that is a number."""
    cfg = payload.get("config")
    for src in (payload, cfg if isinstance(cfg, dict) else {}):
        for n in names:
            v = src.get(n)
            if isinstance(v, bool):
                continue
            if isinstance(v, int | float) and np.isfinite(v):
                return float(v)
    return None


def rank_slices(df: pl.DataFrame) -> list[tuple[str, int, int, int]]:
    """(run, rank, start, end) row ranges of each run and rank in a frame
    sorted by run_id, rank (as ``Frames.steps()`` is): per-rank work then
    slices numpy columns instead of copying partitions."""
    import polars as pl

    if df.height == 0:
        return []
    r, k = pl.col("run_id"), pl.col("rank")
    # rows where the (run, rank) pair changes: the frame is sorted, so each
    # pair is one contiguous block
    starts = (
        df.select((r.ne_missing(r.shift(1)) | k.ne_missing(k.shift(1))).arg_true().alias("a"))
        .get_column("a")
        .to_numpy()
    )
    ends = np.append(starts[1:], df.height)
    runs = df.get_column("run_id").gather(starts).to_list()
    ranks = df.get_column("rank").gather(starts).to_list()
    return [
        (str(run), int(rank), int(a), int(b))
        for run, rank, a, b in zip(runs, ranks, starts, ends, strict=True)
    ]


def ranks_from_slices(slices: list[tuple[str, int, int, int]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for run, rank, _, _ in slices:
        out.setdefault(run, []).append(rank)
    return out


def steps_slices(ctx: Frames) -> list[tuple[str, int, int, int]]:
    """:func:`rank_slices` of ``ctx.steps()``, computed once per context."""
    key = "rankwise:steps_slices"
    if key not in ctx.memo:
        ctx.memo[key] = rank_slices(ctx.steps())
    return ctx.memo[key]


def trend1(x: np.ndarray, y: np.ndarray, alpha: float = 0.99, max_points: int = 200) -> Any:
    """Trend test of one series with :func:`stats.trend_windows` (numpy only:
    importing scipy.stats costs more than the whole analysis of a run).
    Finite points only, evenly subsampled to ``max_points``."""
    from tunescope.detectors.scans import stats

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) > max_points:
        idx = np.linspace(0, len(x) - 1, max_points).round().astype(int)
        x, y = x[idx], y[idx]
    t = stats.trend_windows(x[None, :], y[None, :], alpha=alpha)
    return stats.Trend(
        float(t.tau[0]), float(t.p[0]), float(t.slope[0]), float(t.lo[0]), float(t.hi[0]), t.n
    )
