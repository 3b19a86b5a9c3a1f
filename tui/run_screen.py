"""One run: its curves, findings, per-rank compute times and config."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.json import JSON
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import Resize
from textual.widgets import (
    Footer,
    Header,
    OptionList,
    Static,
    TabbedContent,
    TabPane,
)
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from tunescope.detectors.base import Context
from tunescope.detectors.limits import run_limits
from tunescope.detectors.scans.series import event_payload
from tunescope.findings import DEATH_DETECTOR, status_text
from tunescope.numbers import cell
from tunescope.report.curves import RUN_PLOTS, rank_grid
from tunescope.tui.colours import SEVERITY_COLOURS, STATUS_STYLE
from tunescope.tui.error_modal import WorkerScreen
from tunescope.tui.messages import (
    CurveLoaded,
    FindingsLoaded,
    RankGridLoaded,
    ReportWritten,
    RunSummaryLoaded,
    StoreChanged,
)
from tunescope.tui.plot import Marker, Plot
from tunescope.tui.queries import run_findings, run_interventions, run_plots, run_summary
from tunescope.tui.rank_grid import RankGrid, windows_for


def step_span(f: dict[str, Any]) -> str:
    a, b = f.get("step_start"), f.get("step_end")
    if a is None:
        return "whole run"
    if b is None or b == a:
        return f"step {a}"
    return f"steps {a}–{b}"


class RunScreen(WorkerScreen):
    """Curves with findings marked; selecting a finding zooms to its steps."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("m", "toggle_smooth", "Smooth"),
        Binding("l", "toggle_log", "Log"),
        Binding("z", "reset_zoom", "Unzoom", show=False),
        Binding("n", "next_finding", "Next"),
        Binding("w", "toggle_wide", "Wide"),
        Binding("r", "report", "Report"),
        Binding("p", "prev_finding", "Prev", show=False),
        Binding("1", "tab('tab-curves')", "Curves", show=False),
        Binding("2", "tab('tab-ranks')", "Ranks", show=False),
        Binding("3", "tab('tab-config')", "Config", show=False),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__(classes="run-screen")
        self.run_id = run_id
        self.row: dict[str, Any] | None = None
        self.extent: tuple[int, int] | None = None
        self.zoom: tuple[float, float] | None = None
        self.smooth = False
        self.log_y = False
        self.findings: list[dict[str, Any]] = []
        self.guard_markers: list[Marker] = []  # the training guard's interventions
        self.selected: int | None = None
        self.generation = 0
        self.detail = ""
        self._last_widths: tuple[int, int] = (0, 0)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(self.run_id, id="run-title")
        yield Static("", id="run-limits")
        with Horizontal(id="run-body"):
            with TabbedContent(id="run-tabs", initial="tab-curves"):
                with TabPane("Curves", id="tab-curves"), VerticalScroll(id="curves"):
                    for spec in RUN_PLOTS:
                        yield Plot(spec.title, id=f"plot-{spec.id}", classes="run-plot")
                with TabPane("Ranks", id="tab-ranks"), VerticalScroll():
                    yield RankGrid(id="rank-grid")
                with TabPane("Config", id="tab-config"), VerticalScroll():
                    yield Static("loading…", id="run-config")
            with Vertical(id="findings-panel"):
                yield Static("Findings", id="findings-title")
                yield OptionList(id="findings-list")
                yield VerticalScroll(Static("", id="finding-detail"), id="finding-scroll")
        yield Footer()

    def on_mount(self) -> None:
        self.load_summary()
        self.load_findings()

    # ---- workers --------------------------------------------------------------

    @work(thread=True, exclusive=True, group="summary", exit_on_error=False,
          description="loading the run")  # fmt: skip
    def load_summary(self) -> None:
        cur = self.app.store.cursor()
        try:
            row, config, extent = run_summary(cur, self.run_id)
        finally:
            cur.close()
        limits = run_limits(Context(self.app.store, [self.run_id])).get(self.run_id, [])
        if not get_current_worker().is_cancelled:
            self.post_message(RunSummaryLoaded(row, config, extent, limits))

    @work(thread=True, exclusive=True, group="findings", exit_on_error=False,
          description="loading findings")  # fmt: skip
    def load_findings(self) -> None:
        cur = self.app.store.cursor()
        try:
            found = run_findings(cur, self.run_id)
            acted = run_interventions(cur, self.run_id)
        finally:
            cur.close()
        # what the training guard did: a mark on the x axis of every curve
        guard = [Marker(s, s, "info", f"guard {a} ({f})") for s, a, f in acted]
        if not get_current_worker().is_cancelled:
            self.post_message(FindingsLoaded(found, guard))

    @work(thread=True, exclusive=True, group="curves", exit_on_error=False,
          description="loading curves")  # fmt: skip
    def load_curves(
        self, x_range: tuple[float, float], buckets: dict[str, int], smooth: bool, generation: int
    ) -> None:
        cur = self.app.store.cursor()
        try:
            found = run_plots(cur, self.run_id, RUN_PLOTS, x_range, buckets, smooth=smooth)
        finally:
            cur.close()
        if get_current_worker().is_cancelled:
            return
        for spec in RUN_PLOTS:
            self.post_message(CurveLoaded(spec.id, found[spec.id], x_range, generation))

    @work(thread=True, exclusive=True, group="ranks", exit_on_error=False,
          description="loading per-rank times")  # fmt: skip
    def load_ranks(self, windows: int) -> None:
        cur = self.app.store.cursor()
        try:
            ranks, bounds, grid, metric = rank_grid(cur, self.run_id, windows)
        finally:
            cur.close()
        if not get_current_worker().is_cancelled:
            self.post_message(RankGridLoaded(ranks, bounds, grid, metric))

    @work(thread=True, exclusive=True, group="report", exit_on_error=False,
          description="writing the HTML report")  # fmt: skip
    def write_report(self) -> None:
        from tunescope.report.html import default_path, write_report

        path = write_report(self.app.store, [self.run_id], default_path([self.run_id]))
        self.post_message(ReportWritten(str(path), 1))

    # ---- handlers -------------------------------------------------------------

    def on_report_written(self, message: ReportWritten) -> None:
        self.notify(f"wrote {message.path}; open it in a browser")

    def on_run_summary_loaded(self, message: RunSummaryLoaded) -> None:
        self.row = message.row
        self.extent = message.extent
        self._show_title()
        limits = self.query_one("#run-limits", Static)
        limits.update(Text("cannot show: " + "; ".join(message.limits), style="dim"))
        limits.display = bool(message.limits)
        config = self.query_one("#run-config", Static)
        if message.config is None:
            config.update("no run_start config was logged for this run")
        else:
            config.update(JSON.from_data(message.config, indent=2, sort_keys=True))
        self.refresh_curves()
        self.refresh_ranks()

    def on_curve_loaded(self, message: CurveLoaded) -> None:
        if message.generation != self.generation:
            return
        plot = self.query_one(f"#plot-{message.plot_id}", Plot)
        plot.set_series(message.series, message.x_range)

    def on_findings_loaded(self, message: FindingsLoaded) -> None:
        self.findings = message.findings
        self.guard_markers = message.markers
        if self.row is not None:
            self._show_title()  # the status names the cause of a crash
        box = self.query_one("#findings-list", OptionList)
        box.clear_options()
        options = []
        for i, f in enumerate(self.findings):
            sev = f["severity"] or "info"
            text = Text()
            text.append("● ", style=SEVERITY_COLOURS.get(sev, ""))
            text.append(f"{f['detector']} ", style="bold")
            text.append(f"{f['name']}\n")
            rank = f" rank {f['rank']}" if f.get("rank") is not None else ""
            text.append(f"  {step_span(f)}{rank}", style="dim")
            options.append(Option(text, id=f"finding-{i}"))
        box.add_options(options)
        title = self.query_one("#findings-title", Static)
        title.update(f"Findings ({len(self.findings)})" if self.findings else "No findings")
        if self.selected is not None and self.selected >= len(self.findings):
            self.selected = None
        if self.findings:
            box.highlighted = self.selected if self.selected is not None else 0
        else:
            self._show_detail(None)
        self._apply_markers()

    def on_rank_grid_loaded(self, message: RankGridLoaded) -> None:
        self.query_one("#rank-grid", RankGrid).show(
            message.ranks, message.windows, message.grid, message.metric
        )

    def on_store_changed(self, message: StoreChanged) -> None:
        if self.run_id in message.run_ids:
            if not message.findings_only:
                self.load_summary()
            self.load_findings()

    def on_resize(self, event: Resize) -> None:
        widths = self._widths()
        if widths != self._last_widths and self.extent is not None:
            self.refresh_curves()
            self.refresh_ranks()

    @on(OptionList.OptionHighlighted, "#findings-list")
    def _finding_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        idx = event.option_index
        if 0 <= idx < len(self.findings):
            self._show_detail(self.findings[idx])

    @on(OptionList.OptionSelected, "#findings-list")
    def _finding_selected(self, event: OptionList.OptionSelected) -> None:
        self.zoom_to(event.option_index)

    @on(TabbedContent.TabActivated, "#run-tabs")
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "tab-ranks":
            self.call_after_refresh(self.refresh_ranks)

    # ---- behaviour ------------------------------------------------------------

    def _widths(self) -> tuple[int, int]:
        plot = self.query_one("#plot-loss", Plot)
        tabs = self.query_one("#run-tabs", TabbedContent)
        return (plot.size.width, tabs.size.width)

    def refresh_curves(self) -> None:
        if self.extent is None:
            for spec in RUN_PLOTS:
                self.query_one(f"#plot-{spec.id}", Plot).set_series([], None)
            return
        self._last_widths = self._widths()
        self.generation += 1
        x_range = self.zoom or (
            float(self.extent[0]),
            float(max(self.extent[1], self.extent[0] + 1)),
        )
        buckets = {spec.id: self.query_one(f"#plot-{spec.id}", Plot).buckets for spec in RUN_PLOTS}
        loss = self.query_one("#plot-loss", Plot)
        loss.set_log(self.log_y)
        notes = []
        if self.smooth:
            notes.append("smoothed")
        if self.log_y:
            notes.append("log")
        if self.zoom:
            notes.append(f"zoom {int(x_range[0])}–{int(x_range[1])}")
        loss.set_note(" · ".join(notes))
        self.load_curves(x_range, buckets, self.smooth, self.generation)

    def refresh_ranks(self) -> None:
        width = self.query_one("#run-tabs", TabbedContent).size.width
        self.load_ranks(windows_for(width - 2 if width else 60))

    def _show_title(self) -> None:
        r = self.row
        title = self.query_one("#run-title", Static)
        if r is None:
            title.update(Text(f"{self.run_id}: not in the store", style="bold red"))
            return
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(r["name"] or self.run_id, style="bold")
        status = r["status"] or "?"
        text.append("  ")
        text.append(status_text(status, self._cause()), style=STATUS_STYLE.get(status, ""))
        done, total = r["last_step"], r["total_steps"]
        text.append(f"  step {done if done is not None else '–'}" + (f"/{total}" if total else ""))
        text.append(f"  loss {cell(r['last_loss'])}")
        if r.get("world_size"):
            text.append(f"  {r['world_size']} rank{'s' if r['world_size'] != 1 else ''}")
        if r.get("model"):
            text.append(f"  {r['model']}", style="dim")
        if r.get("finetuning_type"):
            lora = f" r{r['lora_r']}" if r.get("lora_r") else ""
            text.append(f" {r['finetuning_type']}{lora}", style="dim")
        title.update(text)

    def _cause(self) -> str | None:
        """Why the run died, as TS601 named it (from the loaded findings)."""
        for f in self.findings:
            if f["detector"] == DEATH_DETECTOR:
                ev = event_payload(f.get("evidence"))
                return str(ev["label"]) if isinstance(ev, dict) and ev.get("label") else None
        return None

    def _show_detail(self, f: dict[str, Any] | None) -> None:
        box = self.query_one("#finding-detail", Static)
        if f is None:
            self.detail = ""
            box.update(Text("no findings for this run", style="dim"))
            return
        sev = f["severity"] or "info"
        text = Text()
        text.append(
            f"{sev.upper()} {f['detector']} {f['name']}\n",
            style="bold " + SEVERITY_COLOURS.get(sev, ""),
        )
        text.append(
            step_span(f) + (f", rank {f['rank']}" if f.get("rank") is not None else "") + "\n\n",
            style="dim",
        )
        text.append(f"{f['message']}\n\n")
        text.append("Suggestion: ", style="bold")
        text.append(f"{f['suggestion']}\n")
        if f.get("step_start") is not None:
            text.append("\nEnter: zoom the curves here", style="dim")
        self.detail = text.plain
        box.update(text)

    def _apply_markers(self) -> None:
        markers = [
            Marker(
                start=f["step_start"],
                end=f["step_end"] if f["step_end"] is not None else f["step_start"],
                severity=f["severity"] or "info",
                label=f["detector"],
                selected=(i == self.selected),
            )
            for i, f in enumerate(self.findings)
            if f.get("step_start") is not None
        ] + self.guard_markers
        for spec in RUN_PLOTS:
            self.query_one(f"#plot-{spec.id}", Plot).set_markers(markers)

    def zoom_to(self, index: int) -> None:
        """Select finding ``index`` and zoom every curve to its step range."""
        if not 0 <= index < len(self.findings):
            return
        f = self.findings[index]
        self.selected = index
        self._show_detail(f)
        self._apply_markers()
        if f.get("step_start") is None or self.extent is None:
            return
        start = int(f["step_start"])
        end = int(f["step_end"]) if f["step_end"] is not None else start
        pad = max(5, (end - start) // 2)
        lo = max(self.extent[0], start - pad)
        hi = min(self.extent[1], end + pad)
        if hi <= lo:
            hi = lo + 1
        self.zoom = (float(lo), float(hi))
        self.query_one("#run-tabs", TabbedContent).active = "tab-curves"
        self.refresh_curves()

    # ---- actions --------------------------------------------------------------

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_toggle_smooth(self) -> None:
        self.smooth = not self.smooth
        self.refresh_curves()

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y
        self.refresh_curves()

    def action_reset_zoom(self) -> None:
        self.zoom = None
        self.selected = None
        self._apply_markers()
        self.refresh_curves()

    def action_toggle_wide(self) -> None:
        """Widen the findings panel (and its detail) over the curves, or back."""
        self.toggle_class("wide-findings")
        self.call_after_refresh(self.refresh_curves)

    def action_next_finding(self) -> None:
        self._step_finding(+1)

    def action_prev_finding(self) -> None:
        self._step_finding(-1)

    def _step_finding(self, delta: int) -> None:
        if not self.findings:
            return
        if self.selected is None:
            idx = 0 if delta > 0 else len(self.findings) - 1
        else:
            idx = (self.selected + delta) % len(self.findings)
        self.query_one("#findings-list", OptionList).highlighted = idx
        self.zoom_to(idx)

    def action_report(self) -> None:
        self.write_report()

    def action_tab(self, tab: str) -> None:
        self.query_one("#run-tabs", TabbedContent).active = tab
