"""The runs list: one row per run, filtered and sorted in SQL."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Footer, Header, Input, Static
from textual.worker import get_current_worker

from tunescope.numbers import cell
from tunescope.tui.colours import STATUS_STYLE
from tunescope.tui.error_modal import WorkerScreen
from tunescope.tui.messages import ReportWritten, RunsLoaded, StoreChanged
from tunescope.tui.queries import RUNS_PAGE, SORTS, STATUSES, RunFilter, runs_page
from tunescope.tui.row_table import RowTable
from tunescope.words import count

COLUMNS = ("", "run", "status", "steps", "loss", "lr", "ranks", "findings")
# A terminal narrower than NARROW columns shows what matters: run, status, findings.
NARROW = 100
NARROW_COLUMNS = ("", "run", "status", "findings")
# Clicking a column header sorts by it (again: reverses).
HEADER_SORTS = {
    "run": "name",
    "status": "status",
    "steps": "steps",
    "loss": "loss",
    "findings": "findings",
}


def findings_cell(n_error: int, n_warning: int, n_info: int) -> Text:
    text = Text()
    for n, sev, style in (
        (n_error, "E", "bold #ff4d4d"),
        (n_warning, "W", "#ffb000"),
        (n_info, "I", "#4ea1ff"),
    ):
        if n:
            if text:
                text.append(" ")
            text.append(f"{n}{sev}", style=style)
    return text if text else Text("–", style="dim")


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells with "…" in the middle (both ends stay readable)."""
    if len(text) <= width:
        return text
    keep = max(width - 1, 2)
    head = keep // 2
    return text[:head] + "…" + text[len(text) - (keep - head) :]


# the width the runs table's other columns take with their padding (mark, status,
# steps, loss, lr, ranks, findings; in a narrow terminal mark, status and
# findings) and the scroll bar: the run column gets the rest
OTHER_COLUMNS = 64
OTHER_NARROW = 34
RUN_WIDTH = (14, 48)  # the run column's width at the least and the most
ANALYSING = Text("analysing…", style="dim italic")


def steps_cell(row: dict[str, Any]) -> str:
    done = row["last_step"]
    total = row["total_steps"]
    if done is None:
        return "–"
    return f"{done}/{total}" if total else str(done)


class RunsTable(RowTable):
    """The runs table: End goes to the last matching run, loading the pages between."""

    def action_last_row(self) -> None:
        screen = self.screen
        if isinstance(screen, RunsScreen):
            screen.action_last()
        else:
            super().action_last_row()


class RunsScreen(WorkerScreen):
    """Every run under the root; Enter opens one, Space marks runs to compare."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_run", "Open", show=True),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("r", "report", "Report"),
        Binding("slash", "focus_filter", "Filter"),
        Binding("f", "cycle_status", "Status", show=False),
        Binding("x", "toggle_findings", "Findings", show=False),
        Binding("o", "cycle_sort", "Sort"),
        Binding("s", "app.sql", "SQL"),
        Binding("O", "reverse_sort", "Reverse", show=False),
        Binding("escape", "clear_filter", "Clear", show=False),
    ]

    page_size = RUNS_PAGE  # rows per query; the next page loads near the end

    def __init__(self) -> None:
        super().__init__(id="runs-screen")
        self.filter = RunFilter()
        self.marked: list[str] = []
        self.rows: list[dict[str, Any]] = []
        self.matched = 0
        self._total = 0
        self.loaded = False
        self._paging = False
        self._to_end = False  # End pressed: move to the last run once every page is loaded
        self.shown: tuple[str, ...] | None = None  # the columns on screen

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="runs-bar"):
            yield Input(placeholder="filter by name  ( / )", id="runs-filter")
            yield Static("", id="runs-state")
        yield RunsTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="runs-empty")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        self._add_columns(table)
        table.focus()
        self.load()

    def columns(self) -> tuple[str, ...]:
        """The columns that fit the terminal."""
        return NARROW_COLUMNS if (self.app.size.width or NARROW) < NARROW else COLUMNS

    def _add_columns(self, table: DataTable) -> None:
        self.shown = self.columns()
        # a narrow terminal gives the filter box less room and the state bar more
        narrow = self.shown == NARROW_COLUMNS
        self.query_one("#runs-filter", Input).styles.width = 24 if narrow else "40%"
        for name in self.shown:
            table.add_column(name, key=name or "mark", width=1 if not name else None)

    def on_resize(self) -> None:
        if self.shown is None or self.columns() == self.shown:
            return
        table = self.query_one("#runs-table", DataTable)
        row = table.cursor_row
        table.clear(columns=True)
        self._add_columns(table)
        table.add_rows(self._cells(r) for r in self.rows)
        if 0 <= row < table.row_count:
            table.move_cursor(row=row, animate=False)

    # ---- data -----------------------------------------------------------------

    @work(thread=True, exclusive=True, group="runs", exit_on_error=False,
          description="loading runs")  # fmt: skip
    def load(self, offset: int = 0, limit: int | None = None) -> None:
        flt = self.filter
        limit = limit or self.page_size
        cur = self.app.store.cursor()
        try:
            rows, matched, total = runs_page(cur, flt, offset, limit)
        finally:
            cur.close()
        if not get_current_worker().is_cancelled:
            self.post_message(RunsLoaded(rows, matched, total, offset, flt))

    @work(thread=True, exclusive=True, group="report", exit_on_error=False,
          description="writing the HTML report")  # fmt: skip
    def write_report(self, run_ids: list[str]) -> None:
        from tunescope.report.html import default_path, write_report

        path = write_report(self.app.store, run_ids, default_path(run_ids))
        self.post_message(ReportWritten(str(path), len(run_ids)))

    def on_report_written(self, message: ReportWritten) -> None:
        self.notify(f"wrote {message.path} ({message.runs} run(s)); open it in a browser")

    def reload(self) -> None:
        """Load the first page again, as many rows as are shown (after a change)."""
        self._paging = False
        self.load(0, max(self.page_size, len(self.rows)))

    def on_runs_loaded(self, message: RunsLoaded) -> None:
        if message.filter != self.filter:
            return  # a page of an older filter
        table = self.query_one("#runs-table", DataTable)
        self.matched = message.matched
        if message.offset:
            self._paging = False
            if message.offset != len(self.rows):
                return
            self.rows.extend(message.rows)
            table.add_rows(self._cells(r) for r in message.rows)
            self._total = message.total
            self._show_state(message.matched, message.total)
            if self._to_end:
                self._to_end = False
                table.move_cursor(row=table.row_count - 1, animate=False)
            return
        keep = None
        if table.row_count and 0 <= table.cursor_row < len(self.rows):
            keep = self.rows[table.cursor_row]["run_id"]
        self.rows = list(message.rows)
        table.clear()
        table.add_rows(self._cells(r) for r in message.rows)
        if keep is not None:
            for i, r in enumerate(message.rows):
                if r["run_id"] == keep:
                    table.move_cursor(row=i, animate=False)
                    break
        self.loaded = True
        self._total = message.total
        self._show_state(message.matched, message.total)
        self._show_empty(message.matched, message.total)

    def _show_empty(self, matched: int, total: int) -> None:
        """Say why the table is empty instead of showing a bare header."""
        box = self.query_one("#runs-empty", Static)
        if total == 0:
            root = getattr(self.app.store, "root", None)
            where = f" under {root}" if root is not None else ""
            live = getattr(self.app, "live", False)
            box.update(
                f"No runs{where} yet"
                + (
                    ": waiting for logs (new runs appear here as they are written)."
                    if live
                    else "."
                )
                + "\nA run is a folder with tunescope events, trainer_state.json, "
                "trainer_log.jsonl, logging.jsonl, TensorBoard, MLflow or W&B files; "
                "`tunescope ingest RUNS --verbose` lists what was skipped."
            )
        elif matched == 0:
            box.update("No runs match the filter: escape clears it, f cycles the status filter.")
        box.display = matched == 0

    @on(DataTable.RowHighlighted, "#runs-table")
    def _maybe_next_page(self, event: DataTable.RowHighlighted) -> None:
        """Fetch the next page when the cursor comes near the last loaded row."""
        self._show_state(self.matched, self._total)
        near_end = event.cursor_row >= len(self.rows) - min(20, self.page_size // 2)
        if near_end and len(self.rows) < self.matched and not self._paging:
            self._paging = True
            self.load(len(self.rows))

    def run_width(self) -> int:
        """The run column's width: what the screen leaves after the other columns."""
        width = self.app.size.width or 100
        other = OTHER_NARROW if width < NARROW else OTHER_COLUMNS
        return max(RUN_WIDTH[0], min(RUN_WIDTH[1], width - other))

    def _cells(self, r: dict[str, Any]) -> list[Any]:
        status = r["status"] or "?"
        findings = findings_cell(r["n_error"], r["n_warning"], r["n_info"])
        if getattr(self.app, "analysing", False) and not findings.plain.strip("–"):
            findings = ANALYSING  # none stored yet: the detectors are still running
        cells = {
            "": Text("●", style="bold #b48cff") if r["run_id"] in self.marked else "",
            "run": shorten(r["display"] or r["run_id"], self.run_width()),
            "status": Text(status, style=STATUS_STYLE.get(status, "")),
            "steps": steps_cell(r),
            "loss": cell(r["last_loss"]),
            "lr": cell(r["last_lr"], ".2e"),
            "ranks": cell(r["world_size"]),
            "findings": findings,
        }
        return [cells[name] for name in self.shown or COLUMNS]

    def _show_state(self, matched: int, total: int) -> None:
        f = self.filter
        parts = [
            f"{matched:,} of {count(total, 'run')}" if matched != total else count(total, "run")
        ]
        if len(self.rows) < matched:
            parts.append(f"{len(self.rows)} loaded")
        if f.status:
            parts.append(f"status={f.status}")
        if f.findings_only:
            parts.append("with findings")
        parts.append(f"sort={f.sort}{' ↓' if f.descending else ''}")
        if self.marked:
            parts.append(f"{len(self.marked)} marked")
        if getattr(self.app, "analysing", False):
            parts.append("analysing…")
        box = self.query_one("#runs-state", Static)
        current = self._current_row()
        if current and shorten(current["display"] or "", self.run_width()) != current["run_id"]:
            # the full id of the highlighted run: the sort order gives way to it
            room = box.size.width - 2 if box.size.width else 200
            run_id = current["run_id"]
            if len(" · ".join([*parts, run_id])) > room:
                parts = [p for p in parts if not p.startswith("sort=")]
            if len(" · ".join([*parts, run_id])) > room and matched == total:
                parts = parts[1:]  # the count is in the title too
            head = len(" · ".join(parts)) + 3
            parts.append(shorten(run_id, max(12, room - head)))
        box.update(" · ".join(parts))
        self.app.sub_title = count(total, "run")

    def on_store_changed(self, message: StoreChanged) -> None:
        self.reload()

    def _set_filter(self, **changes: Any) -> None:
        self.filter = RunFilter(**{**self.filter.__dict__, **changes})
        self.load()

    # ---- actions --------------------------------------------------------------

    def _current_row(self) -> dict[str, Any] | None:
        table = self.query_one("#runs-table", DataTable)
        if not self.rows or not (0 <= table.cursor_row < len(self.rows)):
            return None
        return self.rows[table.cursor_row]

    def current_run(self) -> str | None:
        row = self._current_row()
        return None if row is None else row["run_id"]

    def action_last(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        if len(self.rows) < self.matched:
            self._to_end = True  # load every remaining page, then move there
            self._paging = True
            self.load(len(self.rows), self.matched - len(self.rows))
        elif table.row_count:
            table.move_cursor(row=table.row_count - 1, animate=False)

    @on(DataTable.HeaderSelected, "#runs-table")
    def _header_selected(self, event: DataTable.HeaderSelected) -> None:
        sort = HEADER_SORTS.get(str(event.column_key.value))
        if sort is None:
            return
        if sort == self.filter.sort:
            self._set_filter(descending=not self.filter.descending)
        else:
            self._set_filter(sort=sort, descending=False)

    @on(DataTable.RowSelected, "#runs-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def action_open_run(self) -> None:
        run_id = self.current_run()
        if run_id is not None:
            from tunescope.tui.run_screen import RunScreen

            self.app.push_screen(RunScreen(run_id))

    def action_mark(self) -> None:
        run_id = self.current_run()
        if run_id is None:
            return
        if run_id in self.marked:
            self.marked.remove(run_id)
        else:
            self.marked.append(run_id)
        table = self.query_one("#runs-table", DataTable)
        row = table.cursor_row
        table.update_cell_at(
            Coordinate(row, 0), Text("●", style="bold #b48cff") if run_id in self.marked else ""
        )
        if row + 1 < table.row_count:
            table.move_cursor(row=row + 1, animate=False)
        self._show_state(self.matched, self._total)

    def action_compare(self) -> None:
        from tunescope.tui.compare_screen import CompareScreen

        chosen = list(self.marked)
        if len(chosen) < 2:
            current = self.current_run()
            if current and current not in chosen:
                chosen.append(current)
        self.app.push_screen(CompareScreen(chosen))

    def action_report(self) -> None:
        """Write the HTML report of the marked runs, else of the current one."""
        chosen = list(self.marked) or [r for r in [self.current_run()] if r]
        if chosen:
            self.write_report(chosen)

    def action_focus_filter(self) -> None:
        self.query_one("#runs-filter", Input).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#runs-filter", Input)
        if box.value:
            box.value = ""
        self.query_one("#runs-table", DataTable).focus()

    @on(Input.Changed, "#runs-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self._set_filter(text=event.value)

    @on(Input.Submitted, "#runs-filter")
    def _filter_submitted(self) -> None:
        self.query_one("#runs-table", DataTable).focus()

    def action_cycle_status(self) -> None:
        options = [None, *STATUSES]
        nxt = options[(options.index(self.filter.status) + 1) % len(options)]
        self._set_filter(status=nxt)

    def action_toggle_findings(self) -> None:
        self._set_filter(findings_only=not self.filter.findings_only)

    def action_cycle_sort(self) -> None:
        keys = list(SORTS)
        self._set_filter(sort=keys[(keys.index(self.filter.sort) + 1) % len(keys)])

    def action_reverse_sort(self) -> None:
        self._set_filter(descending=not self.filter.descending)
