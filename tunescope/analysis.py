"""The analysis service: run the detectors over a store and store what they found.

Every surface that analyses calls :func:`analyze_store`, once: ``tunescope
analyze`` and ``tunescope report``, the fan-out's ``analyze_runs`` (and
``export``'s first analysis), the TUI's live analysis and ``tunescope watch``::

    analysis = analyze_store(store, config, select=["TS1"], ignore=["TS103"])
    analysis.found   # the chosen detectors' findings: what a report shows
    analysis.full    # every enabled detector's findings: what the store now holds

What the store keeps never depends on ``select``/``ignore`` (they filter a
report, never what the TUI and ``SELECT * FROM findings`` show). The findings
memo (:mod:`tunescope.detectors.memo`) keeps each run's findings by a content
key, so an unchanged run is not analysed again, and an unchanged corpus is not
stored again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from tunescope.config import Config
from tunescope.detectors.engine import analyze_views, finding_rows
from tunescope.detectors.memo import Memo
from tunescope.findings import Finding

if TYPE_CHECKING:
    from tunescope.ingest.store.database import Store

Ids = Iterable[str] | str | None
"""Detector ids or id prefixes: a list, or one comma-separated string."""


class Detect(Protocol):
    """An analysis function used in place of the detectors (``watch
    --analyzer MODULE:FUNCTION``; tests): the signature of
    :func:`tunescope.detectors.engine.analyze`."""

    def __call__(
        self,
        store: Store,
        *,
        select: Ids,
        ignore: Ids,
        config: Config | None,
        run_ids: Sequence[str] | None,
    ) -> list[Finding]: ...


@dataclass
class Analysis:
    """What one analysis found, in two views (equal without ``select``/``ignore``)."""

    found: list[Finding]
    """The findings of the detectors that ``select``/``ignore`` chose: what a
    report shows and its exit code judges."""
    full: list[Finding]
    """The findings of every detector the configuration enables: what the
    store now holds for :attr:`run_ids`."""
    run_ids: list[str] = field(default_factory=list)
    """The runs analysed (their stored findings were replaced by :attr:`full`)."""
    memo: Memo | None = None
    """The findings memo the analysis used (run summaries read each run's
    limits through it); None without one."""


def analyze_store(
    store: Store,
    config: Config | None = None,
    *,
    select: Ids = None,
    ignore: Ids = None,
    run_ids: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    reuse: bool = True,
    detect: Detect | None = None,
) -> Analysis:
    """Analyse the runs of ``store`` (all of them, or ``run_ids``) and store
    the findings of every enabled detector for those runs.

    ``progress(runs_done, runs_total)`` is called after each batch of runs.
    ``reuse``: keep findings in the memo and reuse those of unchanged runs
    (the result is the same either way). ``detect``: an analysis function in
    place of the detectors; its findings about ``run_ids`` are both views,
    and the memo is not used.

    A detector that raises is a :class:`~tunescope.detectors.engine.DetectorError`
    naming it, and nothing is stored."""
    ids = store.run_ids() if run_ids is None else list(run_ids)
    if not ids:
        return Analysis([], [])
    memo: Memo | None = None
    key: str | None = None  # what the whole stored table is made from (None: unknown)
    if detect is not None:
        wanted = set(ids)
        found = detect(store, select=select, ignore=ignore, config=config, run_ids=run_ids)
        found = full = [f for f in found if f.run in wanted]
    else:
        cfg = config or Config()
        if reuse:
            memo = Memo(store, cfg)
        found, full = analyze_views(
            store,
            select=select,
            ignore=ignore,
            config=cfg,
            run_ids=run_ids,
            progress=progress,
            reuse=memo if memo is not None else False,
        )
        if memo is not None and run_ids is None:  # some runs only: not the whole table
            key = memo.result
    if not store.holds_findings(key):  # an unchanged corpus: stored already
        store.save_findings(finding_rows(full), ids, key)
    return Analysis(found, full, ids, memo)
