"""Detector frames over one rank's step records in memory: what the training
guard hands TS102 and TS401 to judge a run while it trains, with no store
and no SQL.

:class:`LiveFrames` is the live implementation of
:class:`~tunescope.detectors.base.Frames` (the store's is
:class:`~tunescope.detectors.base.Context`): the same detector ``run``
functions read the same frames, built from the lists of values the guard
keeps. The detectors it serves read frames only; SQL raises
:class:`~tunescope.detectors.base.NoStore`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tunescope.detectors.base import NoStore, step_column, step_logged
from tunescope.schema import METRIC_NAMES

if TYPE_CHECKING:
    import polars as pl


class LiveFrames:
    """One rank's records (``cols``: a list of values per name, ``step`` and
    ``ts`` included) and its ``run_start`` payload, as detector frames.

    ``kept`` holds frames that stay the same between the checks of one
    attempt (the events: only ``run_start``), so each check builds only the
    steps; ``memo`` is this check's own.
    """

    def __init__(
        self,
        run_id: str,
        rank: int,
        cols: dict[str, list[Any]],
        start: dict[str, Any],
        kept: dict[Any, Any] | None = None,
    ) -> None:
        self.run_id = run_id
        self.rank = rank
        self.cols = cols
        self.start = start
        self.kept: dict[Any, Any] = {} if kept is None else kept
        self.run_ids: list[str] | None = None  # every run of the source: its one run
        self.groups: dict[str, list[str]] = {}
        self.memo: dict[Any, Any] = {}

    def runs(self) -> pl.DataFrame:
        import polars as pl

        if "runs" not in self.memo:
            steps = self.cols["step"]
            self.memo["runs"] = pl.DataFrame(
                {
                    "run_id": [self.run_id],
                    "status": ["running"],
                    "world_size": [self.start.get("world_size") or 1],
                    "total_steps": [self.start.get("total_steps") or None],
                    "last_step": [steps[-1] if steps else None],
                    "steps_logged": [len(steps)],
                }
            )
        return self.memo["runs"]

    def steps(self) -> pl.DataFrame:
        import polars as pl

        if "steps" not in self.memo:
            n = len(self.cols["step"])
            data: dict[str, Any] = {
                "run_id": pl.Series([self.run_id] * n, dtype=pl.String),
                "rank": pl.Series([self.rank] * n, dtype=pl.Int32),
                "step": pl.Series(self.cols["step"], dtype=pl.Int64),
                "ts": pl.Series(self.cols["ts"], dtype=pl.Float64),
            }
            for name in METRIC_NAMES:
                vals = self.cols.get(name)
                data[name] = pl.Series(vals if vals is not None else [None] * n, dtype=pl.Float64)
            self.memo["steps"] = pl.DataFrame(data)
        return self.memo["steps"]

    def column(self, name: str, as_float: bool = True) -> Any:
        return step_column(self, name, as_float)

    def logged(self, name: str) -> Any:
        return step_logged(self, name)

    def metrics(self, names: list[str]) -> pl.DataFrame:
        """None: the guard keeps no long metrics."""
        import polars as pl

        return pl.DataFrame(
            schema={"run_id": pl.String, "rank": pl.Int32, "step": pl.Int64, "name": pl.String}
        )

    def events(self, kinds: list[str] | None = None) -> pl.DataFrame:
        """The ``run_start`` event, when ``kinds`` asks for it (or for any)."""
        key = ("events", tuple(kinds or ()))
        if key not in self.kept:
            self.kept[key] = self._events(kinds)
        return self.kept[key]

    def _events(self, kinds: list[str] | None) -> pl.DataFrame:
        import polars as pl

        rows = [("run_start", 0, json.dumps(self.start))]
        rows = [r for r in rows if not kinds or r[0] in kinds]
        return pl.DataFrame(
            {
                "run_id": [self.run_id] * len(rows),
                "rank": [self.rank] * len(rows),
                "step": [r[1] for r in rows],
                "ts": [0.0] * len(rows),
                "kind": [r[0] for r in rows],
                "payload": [r[2] for r in rows],
            },
            schema={
                "run_id": pl.String,
                "rank": pl.Int32,
                "step": pl.Int64,
                "ts": pl.Float64,
                "kind": pl.String,
                "payload": pl.String,
            },
        )

    def run_start(self, run_id: str) -> dict[str, Any]:
        return self.start

    def sql(self, query: str, params: list[Any] | None = None) -> pl.DataFrame:
        raise NoStore("the live guard's frames have no store to query")

    def where_runs(self) -> str:
        raise NoStore("the live guard's frames have no store to query")
