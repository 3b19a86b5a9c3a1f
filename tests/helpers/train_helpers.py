"""Shared helpers for the trainer tests (not a test module)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tunescope.eventlog import loads


def events(run_dir: Path, rank: int = 0) -> list[dict[str, Any]]:
    """Every complete event line of one rank's log."""
    out = []
    for line in (run_dir / "events" / f"rank-{rank}.jsonl").read_bytes().splitlines():
        try:
            out.append(loads(line))
        except ValueError:
            continue
    return out


def steps(run_dir: Path, rank: int = 0) -> list[dict[str, Any]]:
    return [e for e in events(run_dir, rank) if e["kind"] == "step"]


def kinds(run_dir: Path, rank: int = 0) -> list[str]:
    return [e["kind"] for e in events(run_dir, rank)]


def median(xs: list[float]) -> float:
    xs = sorted(x for x in xs if not math.isnan(x))
    return xs[len(xs) // 2]


def tiny_config(out: Path, **over: Any) -> Any:
    from tunescope.train.trainer import REPO, load_config

    sets = {
        "output_dir": str(out),
        "max_steps": 12,
        "batch_size": 4,
        "seq_len": 64,
        "warmup_steps": 2,
        "progress": False,
        "cpu_threads": 1,
    }
    sets.update(over)
    inject = sets.pop("inject", [])
    cfg = load_config(
        str(REPO / "fixtures" / "configs" / "lora.yaml"),
        [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in sets.items()],
        inject,
    )
    return cfg


def nonfinite_findings(root: Path) -> list[dict[str, Any]]:
    """The TS001 (non-finite) findings ``tunescope.analyze_runs`` gives for
    the runs under ``root``, by rank then first step."""
    import tunescope

    table = tunescope.analyze_runs([root], select=["TS001"])
    rows = [r for r in table.to_pylist() if r["detector"] == "TS001"]
    return sorted(rows, key=lambda r: (r["rank"] if r["rank"] is not None else -1, r["step_start"]))
