"""Small real analysis functions for the watch tests and the latency bench.

They derive findings from the store by SQL, with the detector engine's
signature, so the watcher can be tested before (and apart from) the engine.
"""

from __future__ import annotations

from tunescope.findings import Finding, Severity


def nan_analyze(store, *, select=None, ignore=None, config=None, run_ids=None):
    """One incident per run, rank and stretch of consecutive non-finite losses:
    a warning for one or two steps, an error from three on. Plus an ``info``
    finding per run (which ``--min-severity warning`` must drop)."""
    where = "" if run_ids is None else "AND list_contains(?, run_id)"
    params = [] if run_ids is None else [list(run_ids)]
    rows = (
        store.cursor()
        .execute(
            f"""
        WITH bad AS (
            SELECT run_id, rank, step,
                   step - row_number() OVER (PARTITION BY run_id, rank ORDER BY step) AS g
            FROM steps WHERE (isnan(loss) OR isinf(loss)) {where}
        )
        SELECT run_id, rank, min(step), max(step), count(*) FROM bad
        GROUP BY run_id, rank, g ORDER BY 1, 2, 3
        """,
            params,
        )
        .fetchall()
    )
    out = []
    for run, rank, start, end, n in rows:
        out.append(
            Finding(
                run=run,
                rank=rank,
                detector="NAN1",
                name="non-finite loss",
                severity=Severity.ERROR if n >= 3 else Severity.WARNING,
                step_start=start,
                step_end=end,
                message=f"loss is NaN/Inf for {n} step(s) from step {start}",
                suggestion="lower the learning rate or clip gradients",
                evidence={"steps": n},
            )
        )
    ids = store.cursor().execute("SELECT run_id FROM runs").fetchall()
    for (run,) in ids:
        if run_ids is None or run in run_ids:
            out.append(Finding(run, "INFO1", "run seen", Severity.INFO, None, None, "seen", ""))
    return out
