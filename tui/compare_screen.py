"""Two or more runs on one plot: loss by default, any metric on request; under
it, the settings that differ between the ticked runs (the config diff)."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Header, Select, SelectionList, Static
from textual.widgets.selection_list import Selection
from textual.worker import get_current_worker

from tunescope.tui.error_modal import WorkerScreen
from tunescope.tui.messages import (
    ConfigDiffLoaded,
    CurveLoaded,
    MetricNamesLoaded,
    RunChoicesLoaded,
    StoreChanged,
)
from tunescope.tui.plot import Plot
from tunescope.tui.queries import compare_series, metric_names, run_choices
from tunescope.words import count


def tick_label(label: str, ticked: bool) -> str:
    """A run's line in the list: "✓" when ticked, so the state shows without colour."""
    return f"✓ {label}" if ticked else f"  {label}"


def diff_table(run_ids: list[str], rows: list[tuple[str, list[str]]]) -> Table | Text:
    """The config diff: one row per setting that differs, one column per run; a
    value unlike the first run's is bold on the highlight colour and starred,
    so the difference shows without colour too."""
    if len(run_ids) < 2:
        return Text("")
    if not rows:
        return Text("config: no setting differs", style="dim")
    table = Table(
        title=f"config differs in {count(len(rows), 'setting')}",
        title_justify="left",
        box=None,
        padding=(0, 1),
        show_edge=False,
    )
    table.add_column("setting", style="bold", no_wrap=True)
    for rid in run_ids:
        table.add_column(rid, overflow="ellipsis", no_wrap=True, min_width=min(len(rid), 16))
    for key, values in rows:
        cells = [Text(values[0] or "-")]
        for v in values[1:]:
            differs = v != values[0]
            cells.append(
                Text(f"{v or '-'}*", style="bold black on yellow") if differs else Text(v or "-")
            )
        table.add_row(key, *cells)
    return table


class CompareScreen(WorkerScreen):
    """Tick runs on the left; pick the metric above the plot."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("m", "toggle_smooth", "Smooth"),
        Binding("l", "toggle_log", "Log scale"),
    ]

    def __init__(self, run_ids: list[str], metric: str = "loss") -> None:
        super().__init__(classes="compare-screen")
        self.run_ids = list(run_ids)
        self.metric = metric
        self.smooth = False
        self.log_y = False
        self.generation = 0
        self._choices_loaded = False
        self._labels: dict[str, str] = {}
        self.diff_rows: list[tuple[str, list[str]]] = []
        """The config diff shown: (setting, value per ticked run)."""

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="compare-body"):
            with Vertical(id="compare-side"):
                yield Static("Runs (space to tick)", classes="side-title")
                yield SelectionList[str](id="compare-runs")
            with Vertical(id="compare-main"):
                with Horizontal(id="compare-bar"):
                    yield Static("metric", id="compare-metric-label")
                    yield Select(
                        [(self.metric, self.metric)],
                        value=self.metric,
                        allow_blank=False,
                        id="compare-metric",
                    )
                yield Plot(self.metric, id="compare-plot")
                yield Static("", id="compare-state")
                yield Static("", id="compare-diff")
        yield Footer()

    def on_mount(self) -> None:
        self.load_choices()
        self.call_after_refresh(self.refresh_plot)

    # ---- workers --------------------------------------------------------------

    @work(thread=True, exclusive=True, group="choices", exit_on_error=False,
          description="listing runs and metrics")  # fmt: skip
    def load_choices(self) -> None:
        cur = self.app.store.cursor()
        try:
            runs = run_choices(cur)
            names = metric_names(cur)
        finally:
            cur.close()
        if not get_current_worker().is_cancelled:
            self.post_message(RunChoicesLoaded(runs))
            self.post_message(MetricNamesLoaded(names))

    @work(thread=True, exclusive=True, group="curves", exit_on_error=False,
          description="loading curves to compare")  # fmt: skip
    def load_curves(
        self, run_ids: list[str], metric: str, buckets: int, smooth: bool, generation: int
    ) -> None:
        cur = self.app.store.cursor()
        try:
            series, x_range = compare_series(cur, run_ids, metric, buckets, smooth)
        finally:
            cur.close()
        if not get_current_worker().is_cancelled:
            self.post_message(CurveLoaded("compare", series, x_range, generation))

    @work(thread=True, exclusive=True, group="diff", exit_on_error=False,
          description="reading the runs' configs")  # fmt: skip
    def load_diff(self, run_ids: list[str], generation: int) -> None:
        from tunescope.detectors.base import Context
        from tunescope.detectors.scans.siblings import diff_keys, run_settings, shown
        from tunescope.report.compare import HIDDEN

        configs = run_settings(Context(self.app.store, run_ids))
        mine = {r: configs.get(r, {}) for r in run_ids}
        keys = [k for k in diff_keys(mine) if k not in HIDDEN] if len(run_ids) > 1 else []
        rows = [(k, [shown(mine[r].get(k)) for r in run_ids]) for k in keys]
        if not get_current_worker().is_cancelled:
            self.post_message(ConfigDiffLoaded(run_ids, rows, generation))

    # ---- handlers -------------------------------------------------------------

    def on_config_diff_loaded(self, message: ConfigDiffLoaded) -> None:
        if message.generation != self.generation:
            return
        self.diff_rows = message.rows
        self.query_one("#compare-diff", Static).update(diff_table(message.run_ids, message.rows))

    def on_run_choices_loaded(self, message: RunChoicesLoaded) -> None:
        box = self.query_one("#compare-runs", SelectionList)
        box.clear_options()
        self._labels = dict((rid, label) for rid, label in message.runs)
        box.add_options(
            [
                Selection(tick_label(label, rid in self.run_ids), rid, rid in self.run_ids, id=rid)
                for rid, label in message.runs
            ]
        )
        self._choices_loaded = True

    def on_metric_names_loaded(self, message: MetricNamesLoaded) -> None:
        select = self.query_one("#compare-metric", Select)
        with self.prevent(Select.Changed):
            select.set_options([(n, n) for n in message.names])
            select.value = self.metric if self.metric in message.names else message.names[0]

    def on_curve_loaded(self, message: CurveLoaded) -> None:
        if message.generation != self.generation:
            return
        plot = self.query_one("#compare-plot", Plot)
        plot.set_series(message.series, message.x_range)
        missing = len(self.run_ids) - len(message.series)
        state = f"{count(len(message.series), 'run')} with {self.metric}"
        if missing > 0:
            state += f"; {count(missing, 'ticked run')} did not log it"
        if len(self.run_ids) < 2:
            state += "; tick two or more runs to compare"
        self.query_one("#compare-state", Static).update(state)

    def on_store_changed(self, message: StoreChanged) -> None:
        if not message.findings_only and set(message.run_ids) & set(self.run_ids):
            self.refresh_plot()

    def on_resize(self) -> None:
        self.refresh_plot()

    @on(SelectionList.SelectedChanged, "#compare-runs")
    def _runs_changed(self, event: SelectionList.SelectedChanged) -> None:
        if not self._choices_loaded:
            return
        selected = list(event.selection_list.selected)
        for rid in set(selected) ^ set(self.run_ids):
            # ticked rows say so in text as well as colour
            label = self._labels.get(rid, rid)
            event.selection_list.replace_option_prompt(rid, tick_label(label, rid in selected))
        # Keep the order in which runs were ticked (it decides the colours).
        self.run_ids = [r for r in self.run_ids if r in selected] + [
            r for r in selected if r not in self.run_ids
        ]
        self.refresh_plot()

    @on(Select.Changed, "#compare-metric")
    def _metric_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and event.value != self.metric:
            self.metric = event.value
            self.refresh_plot()

    def refresh_plot(self) -> None:
        plot = self.query_one("#compare-plot", Plot)
        plot.title = self.metric
        plot.set_log(self.log_y)
        plot.set_note(
            " · ".join(n for n, on_ in (("smoothed", self.smooth), ("log", self.log_y)) if on_)
        )
        self.generation += 1
        self.load_curves(
            list(self.run_ids), self.metric, plot.buckets, self.smooth, self.generation
        )
        self.load_diff(list(self.run_ids), self.generation)

    # ---- actions --------------------------------------------------------------

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_toggle_smooth(self) -> None:
        self.smooth = not self.smooth
        self.refresh_plot()

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y
        self.refresh_plot()
