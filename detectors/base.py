"""What every detector module provides, and the context it runs in.

A detector is one module (``detectors/loss_spike.py``) with:

- ``ID``: its id, e.g. ``"TS101"``; ``NAME``: a short name, e.g. ``"loss-spike"``;
- a module docstring in fixed sections: what it flags, why it matters, an
  example, the suggestion, its options (``tunescope explain TS101`` prints it);
- ``Options``: a dataclass of typed thresholds with defaults and a docstring
  under each field; configurable per detector in ``[tool.tunescope.TS101]`` of
  ``pyproject.toml`` or ``[TS101]`` of ``tunescope.toml``;
- ``run(ctx: Frames, opts: Options) -> list[Finding]``: scores computed
  vectorised per run and rank (polars or DuckDB SQL), thresholds applied after.

A detector reads its data through :class:`Frames`, never from a store
directly: :class:`Context` reads the store's views; the training guard's
:class:`~tunescope.train.live_frames.LiveFrames` holds one rank's step
records in memory, so the same ``run`` judges a run live.

Optionally, ``ACROSS_RUNS = True``: a detector that judges runs against each
other (TS501, against a run's siblings). The engine runs it once with a
context over every run of the store, whatever batch or ``run_ids`` the other
detectors see, and keeps its findings about the runs analysed.

Optionally, ``SUPERSEDES``: a tuple of detector ids whose findings this
detector's findings cover (the same incident seen twice, e.g. a spike inside a
divergence); the engine then keeps only the covering finding.

The registry (``detectors/registry.py``) is a plain list of these modules,
typed ``list[DetectorModule]`` so that mypy checks each one against
:class:`DetectorModule`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import polars as pl

    from tunescope.findings import Finding
    from tunescope.ingest.store.database import Store


class Frames(Protocol):
    """What a detector reads: the runs, steps, metrics and events of the runs
    it judges, as polars frames (and numpy columns of the steps), loaded once
    per source and shared between detectors through ``memo``.

    ``sql`` runs a query over the store's views (``runs``, ``steps``,
    ``metrics``, ``events``) with :meth:`where_runs` limiting it to
    ``run_ids``; a source without a store (the live guard's) raises
    :class:`NoStore` there, so the detectors it runs read frames only.
    """

    run_ids: list[str] | None
    """The runs judged (None: every run of the source)."""
    groups: dict[str, list[str]]
    """``[tool.tunescope.groups]``: sibling groups by name, as run ids or glob
    patterns, where the automatic grouping is wrong."""
    memo: dict[Any, Any]
    """Values computed once per source and shared by detectors (frames,
    series, scans keyed by their options)."""

    def runs(self) -> pl.DataFrame:
        """One row per run (``run_id``, ``status``, ``world_size``,
        ``total_steps``, ``last_step``, ``steps_logged``...)."""
        ...

    def steps(self) -> pl.DataFrame:
        """The step records, sorted by run_id, rank, step."""
        ...

    def column(self, name: str, as_float: bool = True) -> Any:
        """One column of :meth:`steps` as a read-only numpy array (float, null
        as NaN, unless ``as_float`` is false; all NaN when never logged)."""
        ...

    def logged(self, name: str) -> Any:
        """Bool numpy array: where column ``name`` of :meth:`steps` is not null."""
        ...

    def metrics(self, names: list[str]) -> pl.DataFrame:
        """Rows of the long ``metrics`` table for these names, sorted by
        run_id, rank, step."""
        ...

    def events(self, kinds: list[str] | None = None) -> pl.DataFrame:
        """Events (payload as JSON text), optionally of these kinds, sorted
        by run_id, rank, step."""
        ...

    def run_start(self, run_id: str) -> dict[str, Any]:
        """The first ``run_start`` payload of a run, or {}."""
        ...

    def sql(self, query: str, params: list[Any] | None = None) -> pl.DataFrame:
        """A query over the store's views, as a polars DataFrame."""
        ...

    def where_runs(self) -> str:
        """`` WHERE ...`` limiting a query on ``run_id`` to ``run_ids`` ('' for every run)."""
        ...


class NoStore(RuntimeError):
    """A frames source without a store was asked for SQL."""


class DetectorModule(Protocol):
    """A detector module, as the registry lists it (see the module docstring)."""

    ID: str
    NAME: str

    @property
    def Options(self) -> type:
        """The options dataclass (a class, read-only here)."""
        ...

    def run(self, ctx: Frames, opts: Any) -> list[Finding]: ...


@dataclass
class Context:
    """:class:`Frames` read from the store, with the common frames loaded
    once and shared between detectors.

    ``run_ids`` limits the runs analysed (None: all runs in the store).
    """

    store: Store
    run_ids: list[str] | None = None
    groups: dict[str, list[str]] = field(default_factory=dict)
    """``[tool.tunescope.groups]``: sibling groups by name, as run ids or glob
    patterns, where the automatic grouping is wrong (see ``detectors/scans/siblings.py``)."""
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)
    """Values computed once per context and shared by detectors (frames, series,
    scans keyed by their options)."""

    def sql(self, query: str, params: list[Any] | None = None) -> pl.DataFrame:
        """Run SQL on a fresh cursor and return a polars DataFrame."""
        import polars as pl

        from tunescope.ingest.store.duck import fetch_arrow

        table = fetch_arrow(self.store.cursor(), query, params)
        return pl.from_arrow(table)  # type: ignore[return-value]  # a table gives a DataFrame

    def where_runs(self) -> str:
        if self.run_ids is None:
            return ""
        if not self.run_ids:
            return " WHERE false"

        def q(r: str) -> str:
            return "'" + r.replace("'", "''") + "'"

        quoted = ", ".join(q(r) for r in self.run_ids)
        # the range lets DuckDB skip row groups by their min/max run_id (an IN
        # list alone reads every row group's run_id): batches are ranges of runs
        lo, hi = min(self.run_ids), max(self.run_ids)
        return f" WHERE run_id BETWEEN {q(lo)} AND {q(hi)} AND run_id IN ({quoted})"

    def runs(self) -> pl.DataFrame:
        """The ``runs`` view (one row per run)."""
        if "runs" not in self.memo:
            self.memo["runs"] = self.sql(f"SELECT * FROM runs{self.where_runs()}")
        return self.memo["runs"]

    def steps(self) -> pl.DataFrame:
        """The ``steps`` view, sorted by run_id, rank, step."""
        if "steps" not in self.memo:
            # fetched unsorted and sorted here only when out of order: rows are
            # usually stored in order, and DuckDB's ORDER BY of millions of rows
            # costs more than fetching them
            self.memo["steps"] = sort_steps(self.sql(f"SELECT * FROM steps{self.where_runs()}"))
        return self.memo["steps"]

    def column(self, name: str, as_float: bool = True) -> Any:
        return step_column(self, name, as_float)

    def logged(self, name: str) -> Any:
        return step_logged(self, name)

    def metrics(self, names: list[str]) -> pl.DataFrame:
        """Rows of the ``metrics`` view for the given metric names."""
        key = "metrics:" + ",".join(sorted(names))
        if key not in self.memo:
            where = self.where_runs()
            quoted = ", ".join("'" + n.replace("'", "''") + "'" for n in names)
            cond = f"name IN ({quoted})"
            where = f"{where} AND {cond}" if where else f" WHERE {cond}"
            self.memo[key] = self.sql(f"SELECT * FROM metrics{where} ORDER BY run_id, rank, step")
        return self.memo[key]

    def events(self, kinds: list[str] | None = None) -> pl.DataFrame:
        """Rows of the ``events`` view (payload as JSON text), optionally by kind."""
        key = "events:" + ",".join(sorted(kinds or []))
        if key not in self.memo:
            where = self.where_runs()
            if kinds:
                quoted = ", ".join(f"'{k}'" for k in kinds)
                cond = f"kind IN ({quoted})"
                where = f"{where} AND {cond}" if where else f" WHERE {cond}"
            self.memo[key] = self.sql(
                "SELECT run_id, rank, step, ts, kind, payload::VARCHAR AS payload "
                f"FROM events{where} ORDER BY run_id, rank, step"
            )
        return self.memo[key]

    def run_start(self, run_id: str) -> dict[str, Any]:
        """The first ``run_start`` payload of a run (config, LoRA settings,
        ``logging_steps`` and ``per_rank`` for foreign formats), or {}."""
        import json

        if "run_start" not in self.memo:
            starts: dict[str, dict[str, Any]] = {}
            for row in self.events(["run_start"]).iter_rows(named=True):
                starts.setdefault(row["run_id"], json.loads(row["payload"]))
            self.memo["run_start"] = starts
        return self.memo["run_start"].get(run_id, {})


def sort_steps(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` sorted by run_id, rank, step (nulls last, ties in their stored
    order), as ``ORDER BY run_id, rank, step`` would; returned as is when it
    is already in that order (checked in a few vectorised passes)."""
    import numpy as np
    import polars as pl

    keys = ["run_id", "rank", "step"]
    if df.height < 2 or not all(k in df.columns for k in keys):
        return df
    in_order = all(df.get_column(k).null_count() == 0 for k in keys) and bool(
        df.get_column("run_id").is_sorted()
    )
    if in_order:
        # within a run, (rank, step) must not go down; where it does, the run
        # must change there (run_id is sorted, so it then increases)
        rank = df.get_column("rank").to_numpy()
        step = df.get_column("step").to_numpy()
        d_rank, d_step = np.diff(rank), np.diff(step)
        down = np.flatnonzero((d_rank < 0) | ((d_rank == 0) & (d_step < 0))) + 1
        if len(down):
            run = df.get_column("run_id")
            idx = pl.Series(down)
            in_order = bool((run.gather(idx) != run.gather(idx - 1)).all())
    if in_order:
        return df
    return df.sort(keys, nulls_last=True, maintain_order=True)


def step_column(frames: Frames, name: str, as_float: bool = True) -> Any:
    """:meth:`Frames.column` for any source: one column of its steps as a
    numpy array, float (null: NaN) unless ``as_float`` is false, converted
    once per source and shared through its memo (read-only: do not modify)."""
    key = f"steps:col:{name}:{as_float}"
    if key not in frames.memo:
        df = frames.steps()
        if name in df.columns:
            col = df.get_column(name)
            arr = (col.cast(float) if as_float else col).to_numpy()
        else:
            import numpy as np

            arr = np.full(df.height, np.nan)
        arr.flags.writeable = False
        frames.memo[key] = arr
    return frames.memo[key]


def step_logged(frames: Frames, name: str) -> Any:
    """:meth:`Frames.logged` for any source: where column ``name`` of its
    steps is not null, as a bool numpy array (shared, read-only)."""
    key = "steps:logged:" + name
    if key not in frames.memo:
        df = frames.steps()
        if name in df.columns:
            arr = df.get_column(name).is_not_null().to_numpy()
        else:
            import numpy as np

            arr = np.zeros(df.height, dtype=bool)
        arr.flags.writeable = False
        frames.memo[key] = arr
    return frames.memo[key]
