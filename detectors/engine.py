"""Running detectors over a store: batches of runs, the findings memo, the
engine pass (links, supersession) and errors that name the detector.

Which detectors run, with which options, is :mod:`tunescope.detectors.selection`.
The surfaces (CLI, TUI, ``watch``, fan-out) never call this module alone: they
call :func:`tunescope.analysis.analyze_store`, which runs :func:`analyze_views`
and stores what it found. :func:`analyze` (the chosen detectors' findings,
nothing stored) is for tests and benchmarks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

from tunescope.batches import size_batches
from tunescope.config import Config
from tunescope.detectors.base import Context, DetectorModule
from tunescope.detectors.memo import Memo
from tunescope.detectors.selection import (
    build_options,
    check_detector_ids,
    detector_ids,
    select_detectors,
)
from tunescope.detectors.summaries import (  # noqa: F401  (their home is summaries.py)
    interventions,
    run_summaries,
    worst,
)
from tunescope.errors import TunescopeError
from tunescope.findings import Finding, Severity
from tunescope.numbers import number as fmt

if TYPE_CHECKING:
    from tunescope.ingest.store.database import Store


class DetectorError(TunescopeError):
    """A detector raised: reported with its id, never skipped silently."""


def analyze(
    store: Store,
    *,
    select: Iterable[str] | str | None = None,
    ignore: Iterable[str] | str | None = None,
    config: Config | None = None,
    run_ids: Sequence[str] | None = None,
) -> list[Finding]:
    """Run the selected detectors over the runs of ``store`` (all of them,
    or ``run_ids``) and return their findings after the engine pass, sorted
    by run, step and detector.

    A detector that raises is a :class:`DetectorError` naming the detector.
    """
    return analyze_views(
        store, select=select, ignore=ignore, config=config, run_ids=run_ids, full=False
    )[0]


def analyze_views(
    store: Store,
    *,
    select: Iterable[str] | str | None = None,
    ignore: Iterable[str] | str | None = None,
    config: Config | None = None,
    run_ids: Sequence[str] | None = None,
    full: bool = True,
    progress: Callable[..., None] | None = None,
    reuse: bool | Memo = False,
) -> tuple[list[Finding], list[Finding]]:
    """Two views of one analysis: the findings of the detectors chosen by
    ``select``/``ignore`` (what a filtered report shows and its exit code
    judges), and the findings of every detector the configuration enables
    (what the store keeps, so a filtered CI step never erases what the TUI
    and ``SELECT * FROM findings`` show). Each detector runs once; the engine
    pass runs over each view's own findings. ``full=False`` runs only the
    chosen detectors and returns the first view twice. ``progress(runs_done,
    runs_total)`` is called after each batch of runs.

    An across-run detector (:func:`across_runs`) that ``select``/``ignore``
    leave out is not run at all, since it judges every run of the store
    however few are asked about: the full view carries the findings the store
    kept from the last analysis that ran it.

    ``reuse`` (True, or a :class:`~tunescope.detectors.memo.Memo` whose
    ``result`` then names the full view): findings are kept in the cache by a
    content key and a run whose data, status and detector options are
    unchanged is not analysed again; the result is the same either way."""
    cfg = config or Config()
    check_detector_ids(cfg, detector_ids())
    chosen = select_detectors(select, ignore, cfg)
    every = select_detectors(None, None, cfg) if full else chosen
    chosen_ids = {d.ID for d in chosen}
    skipped = [d.ID for d in every if across_runs(d) and d.ID not in chosen_ids]
    kept = stored_findings(store, skipped, run_ids)
    runs = {d.ID: d for d in [*every, *chosen] if d.ID not in skipped}.values()
    options: dict[str, Any] = {d.ID: build_options(cfg, d.ID, d.Options) for d in runs}
    views: tuple[list[Finding], list[Finding]] = ([], [])
    memo = reuse if isinstance(reuse, Memo) else Memo(store, cfg) if reuse else None
    per_run = [d for d in runs if not across_runs(d)]
    across_dets = [d for d in runs if across_runs(d)]
    across = across_run_findings(store, across_dets, options, cfg, run_ids, memo)
    keys: dict[str, str] = {}
    cached: dict[str, dict[str, list[Finding]]] = {}
    if memo is not None:
        ids = store.run_ids() if run_ids is None else run_ids
        keys = {r: memo.run_key(r, per_run, options) for r in ids}
        cached = memo.hits(keys)
    # runs are analysed a bounded batch at a time (findings are per run), so the
    # frames in memory follow the batch, not the corpus; the runs whose findings
    # the memo kept come first, as one batch: (from the memo, runs)
    batches: list[tuple[bool, list[str] | None]] = [(True, list(cached))] if cached else []
    stale = [r for r in keys if r not in cached] if cached else run_ids
    batches += [(False, b) for b in run_batches(store, stale)]
    total = sum(len(b) if b is not None else len(store.run_ids()) for _, b in batches)
    done = 0
    for from_memo, batch in batches:
        if from_memo and batch is not None:
            raw = {d.ID: [f for r in batch for f in cached[r].get(d.ID, [])] for d in per_run}
        else:
            ctx = Context(store, batch, groups=cfg.groups)
            raw = {d.ID: run_detector(d, ctx, options[d.ID]) for d in per_run}
            if memo is not None:
                memo.put_runs(keys if batch is None else batch, keys, raw)
        for det_id, found in across.items():
            raw[det_id] = [f for f in found if batch is None or f.run in batch]
        picked = engine_pass([f for d in chosen for f in raw[d.ID]], chosen)
        views[0].extend(picked)
        # the usual case, no --select/--ignore: the full view is the same list
        same = [d.ID for d in every] == [d.ID for d in chosen]
        views[1].extend(
            picked if same else engine_pass([f for d in every for f in raw.get(d.ID, [])], every)
        )
        views[1].extend(f for f in kept if batch is None or f.run in batch)  # passed when made
        done += len(batch) if batch is not None else total
        if progress is not None:
            progress(done, total)
    if memo is not None:
        memo.save()
        # the full view follows from these keys; findings kept from the store: unknown
        memo.result = None if skipped else memo.result_of(keys, [d.ID for d in every])
    return sort_findings(views[0]), sort_findings(views[1])


def across_runs(det: DetectorModule) -> bool:
    """A detector that judges runs against each other (``ACROSS_RUNS = True``,
    e.g. TS501 against a run's siblings) rather than each run alone."""
    return bool(getattr(det, "ACROSS_RUNS", False))


def across_run_findings(
    store: Store,
    detectors: list[DetectorModule],
    options: dict[str, Any],
    cfg: Config,
    run_ids: Sequence[str] | None,
    memo: Memo | None = None,
) -> dict[str, list[Finding]]:
    """The cross-run detectors' findings, per detector id: each runs once over
    every run of the store (a run's siblings may lie outside ``run_ids`` or
    its batch), and keeps the findings about ``run_ids`` (None: all). With a
    ``memo``, a detector runs only when some run of the store changed."""
    ctx = Context(store, None, groups=cfg.groups)
    wanted = set(run_ids) if run_ids is not None else None
    out = {}
    for d in detectors:
        key = memo.across_key(d, options[d.ID]) if memo is not None else ""
        kept = memo.get(key) if memo is not None else None
        found = kept.get(d.ID, []) if kept is not None else run_detector(d, ctx, options[d.ID])
        if memo is not None and kept is None:
            memo.put(key, "\0" + d.ID, {d.ID: found})
        out[d.ID] = [f for f in found if wanted is None or f.run in wanted]
    return out


def stored_findings(
    store: Store, detectors: Sequence[str], run_ids: Sequence[str] | None
) -> list[Finding]:
    """The findings the store holds from ``detectors`` about ``run_ids``
    (None: every run it holds now), as the last analysis that ran them
    stored them."""
    if not detectors:
        return []
    rows = (
        store.cursor()
        .execute(
            "SELECT run_id, rank, detector, name, severity, step_start, step_end, message, "
            "suggestion, evidence::VARCHAR FROM findings WHERE list_contains($1, detector)",
            [list(detectors)],
        )
        .fetchall()
    )
    wanted = set(run_ids if run_ids is not None else store.run_ids())
    cols = ("run", "rank", "detector", "name", "severity", "step_start", "step_end", "message",
            "suggestion")  # fmt: skip
    return [
        Finding.from_dict({**dict(zip(cols, row[:9], strict=True)), "evidence": json.loads(row[9])})
        for row in rows
        if row[0] in wanted
    ]


BATCH_ROWS = 250_000
"""Step rows (summed over ranks) analysed at once; a larger run is one batch."""


def run_batches(store: Store, run_ids: Sequence[str] | None = None) -> list[list[str] | None]:
    """The runs to analyse, in batches of about :data:`BATCH_ROWS` step rows
    (``[None]``: all runs in one batch, when they fit; ``[]``: nothing to analyse)."""
    rows = (
        store.cursor()
        .execute(
            "SELECT run_id, coalesce(steps_logged, 0) * greatest(coalesce(world_size, 1), 1) "
            "FROM runs ORDER BY run_id"
        )
        .fetchall()
    )
    if run_ids is not None:
        wanted = set(run_ids)
        rows = [r for r in rows if r[0] in wanted]
    elif sum(n for _, n in rows) <= BATCH_ROWS:
        return [None]
    batches = size_batches(rows, lambda row: row[1], BATCH_ROWS)
    return [[run for run, _ in batch] for batch in batches]


def run_detector(det: DetectorModule, ctx: Context, opts: Any) -> list[Finding]:
    """One detector's findings, judged with its own options only."""
    try:
        return list(det.run(ctx, opts))
    except TunescopeError:
        raise
    except Exception as e:
        raise DetectorError(
            f"detector {det.ID} ({det.NAME}) failed: {type(e).__name__}: {e}. "
            f"Skip it with --ignore {det.ID} and report this as a bug."
        ) from e


def engine_pass(findings: list[Finding], detectors: list[DetectorModule]) -> list[Finding]:
    """What combines findings of different detectors, over the selected and
    configured ones only: links first (a grad-norm spike just before a loss
    spike is one incident, told in the loss spike's message), then
    supersession (one incident, one finding)."""
    return merge_incidents(link_incidents(findings), detectors)


class Link(NamedTuple):
    """A ``cause`` finding and an ``effect`` finding of the same run and rank
    that are one incident: the effect's message tells it (``note``, with
    ``{when}``, ``{step}`` and ``{detail}``), and the cause is dropped unless
    it is more severe or ``keep_cause``."""

    cause: str
    effect: str
    steps: int
    note: str
    at: str = "peak"
    """"peak": the cause peaks at most ``steps`` steps before the effect peaks;
    "start": the two begin within ``steps`` steps of each other (at once)."""
    keep_cause: bool = False


LINKS: list[Link] = [
    Link("TS105", "TS101", 20, "The grad norm spiked {when}{detail}"),
    # diverged weights (huge or denormal values) make the same math slower
    Link(
        "TS102",
        "TS302",
        10,
        "It began with the divergence at step {step} (TS102): a diverged model's "
        "huge or denormal values make its math slower; the divergence is the one to fix",
        at="start",
        keep_cause=True,
    ),
]


def link_incidents(findings: list[Finding]) -> list[Finding]:
    """Apply :data:`LINKS`: returns new findings, the inputs are not changed."""
    out = list(findings)
    for link in LINKS:
        causes = [f for f in out if f.detector == link.cause]
        if not causes:
            continue
        drop: set[int] = set()
        for i, f in enumerate(out):
            if f.detector != link.effect:
                continue
            for g in causes:
                if g.run != f.run or (
                    f.rank is not None and g.rank is not None and f.rank != g.rank
                ):
                    continue
                if link.at == "start":
                    at, gat = f.step_start, g.step_start
                    if at is None or gat is None or abs(at - gat) > link.steps:
                        continue
                else:
                    at, gat = _peak(f), _peak(g)
                    if at is None or gat is None or not at - link.steps <= gat <= at:
                        continue
                when = "first" if gat < at else "at the same step"
                ev = g.evidence
                value, ratio = ev.get("grad_norm"), ev.get("ratio_to_median")
                detail = ""
                if isinstance(value, int | float) and isinstance(ratio, int | float):
                    detail = f" ({fmt(value)} at step {gat}, {fmt(ratio)}x its median)"
                evidence = dict(f.evidence)
                evidence["linked"] = [
                    *evidence.get("linked", []),
                    {"detector": g.detector, "step": gat, **ev},
                ]
                note = link.note.format(when=when, step=gat, detail=detail)
                f = out[i] = replace(f, message=f"{f.message} {note}.", evidence=evidence)
                if not link.keep_cause and g.severity.level <= f.severity.level:
                    drop.add(id(g))
                break
        out = [f for f in out if id(f) not in drop]
    return out


def _peak(f: Finding) -> int | None:
    p = f.evidence.get("peak_step") if isinstance(f.evidence, dict) else None
    if isinstance(p, int | float) and not isinstance(p, bool):
        return int(p)
    return f.step_start


def merge_incidents(findings: list[Finding], detectors: list[DetectorModule]) -> list[Finding]:
    """One finding per incident across detectors: a detector's optional
    ``SUPERSEDES`` tuple names detectors whose findings its own findings cover.
    A finding is dropped when a finding of a detector that supersedes it, in the
    same run (and rank, or run-wide), at least as severe, covers its start step."""
    covers: dict[str, tuple[str, ...]] = {
        d.ID: tuple(getattr(d, "SUPERSEDES", ())) for d in detectors
    }
    keep = []
    for g in findings:
        dropped = False
        for f in findings:
            if f is g or g.detector not in covers.get(f.detector, ()):
                continue
            if f.run != g.run or (f.rank is not None and g.rank is not None and f.rank != g.rank):
                continue
            if f.severity.level < g.severity.level or f.step_start is None:
                continue
            end = f.step_end if f.step_end is not None else f.step_start
            if g.step_start is not None and f.step_start <= g.step_start <= end:
                dropped = True
                break
        if not dropped:
            keep.append(g)
    return keep


def sort_findings(findings: list[Finding]) -> list[Finding]:
    def key(f: Finding) -> tuple[Any, ...]:
        return (
            f.run,
            f.step_start if f.step_start is not None else -1,
            -f.severity.level,
            f.detector,
            -1 if f.rank is None else f.rank,
        )

    return sorted(findings, key=key)


def finding_rows(findings: Iterable[Finding]) -> list[dict[str, Any]]:
    """Rows for ``store.save_findings`` (the ``findings`` view's columns)."""
    rows = []
    for f in findings:
        d = f.to_dict()
        row = {"run_id": d.pop("run"), **d}
        row["evidence"] = json.dumps(d["evidence"], sort_keys=True)
        rows.append(row)
    return rows


def fails(findings: Iterable[Finding], fail_on: str) -> bool:
    """True when a finding is at or above ``fail_on`` (error, warning, never)."""
    if fail_on == "never":
        return False
    threshold = Severity.parse(fail_on).level
    return any(f.severity.level >= threshold for f in findings)
