"""Messages that workers post back to the screens that own them.

Workers run DuckDB queries on their own cursor in a thread; they never touch
widgets. Each result travels as one of these messages and the screen's
handler updates its widgets on the UI thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from textual.message import Message

from tunescope.report.curves import Series
from tunescope.tui.plot import Marker


@dataclass
class StoreChanged(Message, bubble=False):
    """A live ingest (or an analysis) changed these runs."""

    run_ids: list[str]
    findings_only: bool = False


@dataclass
class AnalyzeFailed(Message, bubble=False):
    """The detectors raised while analysing live runs."""

    error: str


@dataclass
class ReportWritten(Message, bubble=False):
    """The HTML report of some runs was written to ``path``."""

    path: str
    runs: int


@dataclass
class RunsLoaded(Message, bubble=False):
    """Rows for the runs table: the visible page and how many runs match."""

    rows: list[dict[str, Any]]
    matched: int
    total: int
    offset: int = 0
    filter: Any = None


@dataclass
class RunSummaryLoaded(Message, bubble=False):
    """One run's ``runs`` row, its config and the step extent."""

    row: dict[str, Any] | None
    config: Any
    extent: tuple[int, int] | None
    limits: list[str] = field(default_factory=list)
    """What the run's log cannot show (``detectors/limits.py``)."""


@dataclass
class CurveLoaded(Message, bubble=False):
    """The downsampled series of one plot."""

    plot_id: str
    series: list[Series]
    x_range: tuple[float, float] | None
    generation: int = 0


@dataclass
class ConfigDiffLoaded(Message, bubble=False):
    """The settings that differ between the compared runs: (key, value per run)."""

    run_ids: list[str]
    rows: list[tuple[str, list[str]]]
    generation: int = 0


@dataclass
class FindingsLoaded(Message, bubble=False):
    """A run's findings, ordered by severity then step."""

    findings: list[dict[str, Any]]
    markers: list[Marker] = field(default_factory=list)


@dataclass
class RankGridLoaded(Message, bubble=False):
    """Mean compute time per rank and step window."""

    ranks: list[int]
    windows: list[tuple[int, int]]
    grid: list[list[float | None]]
    metric: str


@dataclass
class MetricNamesLoaded(Message, bubble=False):
    names: list[str]


@dataclass
class RunChoicesLoaded(Message, bubble=False):
    runs: list[tuple[str, str]]  # (run_id, label)


@dataclass
class QueryDone(Message, bubble=False):
    """A user's SQL ran. ``paged``: ``table`` is page ``page`` of the result
    (``more``: another page follows); otherwise it is the whole result (EXPLAIN,
    PRAGMA, several statements), paged into the table on screen."""

    table: pa.Table
    seconds: float
    paged: bool = False
    page: int = 0
    more: bool = False
    new_query: bool = True
    sql: str = ""


@dataclass
class QueryFailed(Message, bubble=False):
    """A user's SQL failed: shown inline, not as a modal."""

    error: str
