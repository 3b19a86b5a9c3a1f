"""What the JSON report says of each run: its figures, finding counts, worst
severity, limits, the guard's interventions and its siblings' group."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from tunescope.detectors.base import Context, Frames
from tunescope.findings import Finding, Severity, jsonable

if TYPE_CHECKING:
    from tunescope.detectors.memo import Memo
    from tunescope.ingest.store.database import Store


def worst(findings: Iterable[Finding]) -> Severity | None:
    level = None
    for f in findings:
        if level is None or f.severity.level > level.level:
            level = f.severity
    return level


def run_summaries(
    store: Store,
    findings: list[Finding],
    run_ids: Sequence[str] | None = None,
    groups: dict[str, list[str]] | None = None,
    memo: Memo | None = None,
):
    """One dict per run: id, name, format, status, steps, last step and loss,
    and its finding counts by severity (the ``runs`` part of the JSON report);
    ``group`` (its siblings' group, :mod:`~tunescope.detectors.scans.siblings`) for
    a run that has siblings. ``groups``: ``[tool.tunescope.groups]``. With a
    ``memo``, an unchanged run's limits are not read again."""
    from tunescope.detectors.limits import run_limits
    from tunescope.detectors.scans.siblings import sibling_groups
    from tunescope.findings import death_cause

    ctx = Context(store, list(run_ids) if run_ids is not None else None)
    runs = ctx.runs()
    if memo is not None:
        limits = memo.limits(store, runs.get_column("run_id").to_list())
    else:
        limits = run_limits(ctx)
    acted = interventions(ctx)
    group_of = {
        r: g.name for g in sibling_groups(Context(store, None, groups=groups or {})) for r in g.runs
    }
    out = []
    for r in runs.sort("run_id").iter_rows(named=True):
        mine = [f for f in findings if f.run == r["run_id"]]
        counts = {s.value: sum(1 for f in mine if f.severity is s) for s in Severity}
        w = worst(mine)
        out.append(
            {
                "run": r["run_id"],
                "name": r.get("name"),
                "format": r.get("format"),
                "status": r.get("status"),
                "world_size": r.get("world_size"),
                "steps_logged": r.get("steps_logged"),
                "last_step": r.get("last_step"),
                "total_steps": r.get("total_steps"),
                "last_loss": jsonable(r.get("last_loss")),
                "findings": counts,
                "worst": w.value if w else None,
                "limits": limits.get(r["run_id"], []),
                "interventions": acted.get(r["run_id"], []),
                "cause": death_cause(mine),
            }
        )
        if r["run_id"] in group_of:
            out[-1]["group"] = group_of[r["run_id"]]
    return out


def interventions(ctx: Frames) -> dict[str, list[dict[str, Any]]]:
    """Per run, what the training guard did (``intervention`` events), once
    per step and action however many ranks logged it."""
    out: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[Any, ...]] = set()
    for row in ctx.events(["intervention"]).iter_rows(named=True):
        try:
            p = json.loads(row["payload"] or "{}")
        except ValueError:
            continue
        key = (row["run_id"], row["step"], p.get("action"), p.get("finding"))
        if key in seen:
            continue
        seen.add(key)
        item = {"step": row["step"], "action": p.get("action"), "finding": p.get("finding")}
        for k in ("steps", "checkpoint", "lr_factor"):
            if p.get(k) is not None:
                item[k] = p[k]
        out.setdefault(row["run_id"], []).append(item)
    return out
