"""What a run's log cannot show: said once in the run summary, never as a finding.

Foreign formats log one row for all ranks, many logs carry no grad norms,
memory or step times. Detectors that need those signals stay silent on such
runs; :func:`run_limits` names what was not judged and why, so a clean report
is not mistaken for a clean bill of health. ``analyze`` puts the list in each
run summary (``limits`` in JSON, one ``cannot show:`` line in text) and the
TUI in the run header.
"""

from __future__ import annotations

from typing import Any

from tunescope.detectors.base import Frames

_SIGNALS = (
    # (what cannot be judged, SQL count of the signal, why)
    (
        "gradient explosions and adapter gradients",
        "count(grad_norm) + count(grad_norm_adapter)",
        "no grad norms",
    ),
    (
        "memory growth and OOM forecasts",
        "count(mem_allocated_mb) + count(mem_reserved_mb) + count(mem_peak_mb)",
        "no memory metrics",
    ),
    (
        "throughput drops",
        "count(step_time_s) + count(compute_time_s) + count(tokens) + count(ts)",
        "no step times, tokens or timestamps",
    ),
)


def run_limits(ctx: Frames) -> dict[str, list[str]]:
    """Per run: one line per kind of problem its log cannot show."""
    if "limits" in ctx.memo:
        return ctx.memo["limits"]
    counts = ", ".join(f"{sql} AS s{i}" for i, (_, sql, _) in enumerate(_SIGNALS))
    where = ctx.where_runs()
    df = ctx.sql(
        f"SELECT run_id, count(DISTINCT rank) AS ranks, count(compute_time_s) + "
        f"count(data_time_s) + count(step_time_s) AS timed, {counts} FROM steps{where} "
        "GROUP BY run_id"
    )
    out: dict[str, list[str]] = {}
    for row in df.iter_rows(named=True):
        run = row["run_id"]
        lines = []
        straggler = _straggler_limit(ctx.run_start(run), int(row["ranks"] or 0), bool(row["timed"]))
        if straggler:
            lines.append(f"stragglers and hung ranks: {straggler}")
        for i, (what, _, why) in enumerate(_SIGNALS):
            if not row[f"s{i}"]:
                lines.append(f"{what}: {why}")
        out[run] = lines
    ctx.memo["limits"] = out
    return out


def _straggler_limit(start: dict[str, Any], ranks: int, timed: bool) -> str | None:
    ws = start.get("world_size")
    world = int(ws) if isinstance(ws, int | float) and not isinstance(ws, bool) else None
    if start.get("per_rank") is False:
        if world is not None and world <= 1:
            return None
        return f"{start.get('format') or 'this log'} has one row for all ranks"
    if ranks <= 1 and (world is None or world > 1):
        return f"only {ranks} rank logged" + (f" of {world}" if world else " (world size unknown)")
    if ranks > 1 and not timed:
        return f"the {ranks} ranks log no compute_time_s, data_time_s or step_time_s"
    return None
