"""Read-only SQL over the store's views, results paged into a table."""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, Footer, Header, Input, Static
from textual.worker import get_current_worker

from tunescope.errors import TunescopeError
from tunescope.tui.error_modal import WorkerScreen
from tunescope.tui.messages import QueryDone, QueryFailed
from tunescope.tui.runs_screen import fmt_value

PAGE = 100  # rows in the table at a time
EXAMPLE = "SELECT run_id, status, steps_logged, last_loss FROM runs ORDER BY run_id"


def cell(value: object) -> str:
    if isinstance(value, float):
        return fmt_value(value, ".6g")
    if value is None:
        return "NULL"
    text = str(value)
    return text if len(text) <= 60 else text[:59] + "…"


class SqlScreen(WorkerScreen):
    """Type SQL, press Enter; ] and [ page through the result."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+l", "focus_sql", "Edit SQL"),
        Binding("right_square_bracket", "page(1)", "Next page"),
        Binding("left_square_bracket", "page(-1)", "Prev page"),
    ]

    def __init__(self, sql: str = "") -> None:
        super().__init__(classes="sql-screen")
        self.initial_sql = sql
        self.result: pa.Table | None = None
        self.page = 0
        self.seconds = 0.0
        self.error = ""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(
            value=self.initial_sql,
            placeholder=f"SQL over runs, steps, metrics, events, findings; e.g. {EXAMPLE}",
            id="sql-input",
        )
        yield Static(
            "views: runs · steps · metrics · events · findings   (read-only; Enter runs)",
            id="sql-status",
        )
        yield DataTable(id="sql-table", zebra_stripes=True)
        with Horizontal(id="sql-pager"):
            yield Button("◀ prev", id="sql-prev", compact=True)
            yield Static("", id="sql-page")
            yield Button("next ▶", id="sql-next", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#sql-input", Input).focus()

    @on(Input.Submitted, "#sql-input")
    def _submitted(self, event: Input.Submitted) -> None:
        sql = event.value.strip()
        if sql:
            self.query_one("#sql-status", Static).update(Text("running…", style="dim"))
            self.run_sql(sql)

    @work(thread=True, exclusive=True, group="sql", exit_on_error=False, description="running SQL")
    def run_sql(self, sql: str) -> None:
        cur = self.app.store.cursor()
        clock = self.app.clock
        t0 = clock()
        try:
            table = self.app.store.query(sql, con=cur)
        except TunescopeError as e:  # the user's mistake: shown inline, not as a modal
            if not get_current_worker().is_cancelled:
                self.post_message(QueryFailed(str(e)))
            return
        finally:
            cur.close()
        if not get_current_worker().is_cancelled:
            self.post_message(QueryDone(table, clock() - t0))

    def on_query_done(self, message: QueryDone) -> None:
        self.result = message.table
        self.seconds = message.seconds
        self.error = ""
        self.page = 0
        table = self.query_one("#sql-table", DataTable)
        table.clear(columns=True)
        for name in message.table.column_names:
            table.add_column(name, key=name)
        self._show_page()

    def on_query_failed(self, message: QueryFailed) -> None:
        self.error = message.error
        self.query_one("#sql-status", Static).update(
            Text(f"error: {message.error}", style="bold #ff4d4d")
        )

    def _show_page(self) -> None:
        result = self.result
        if result is None:
            return
        pages = max(1, -(-result.num_rows // PAGE))
        self.page = max(0, min(self.page, pages - 1))
        start = self.page * PAGE
        chunk = result.slice(start, PAGE)
        table = self.query_one("#sql-table", DataTable)
        table.clear()
        table.add_rows([cell(v) for v in row.values()] for row in chunk.to_pylist())
        n = result.num_rows
        self.query_one("#sql-status", Static).update(
            Text(
                f"{n:,} row{'s' if n != 1 else ''} in {self.seconds * 1000:.0f} ms", style="#3ccf91"
            )
        )
        shown = f"rows {start + 1:,}–{start + chunk.num_rows:,} of {n:,}" if n else "no rows"
        self.query_one("#sql-page", Static).update(f" {shown} · page {self.page + 1}/{pages} ")

    def action_page(self, delta: int) -> None:
        self.page += delta
        self._show_page()

    @on(Button.Pressed, "#sql-prev")
    def _prev(self) -> None:
        self.action_page(-1)

    @on(Button.Pressed, "#sql-next")
    def _next(self) -> None:
        self.action_page(1)

    def action_focus_sql(self) -> None:
        self.query_one("#sql-input", Input).focus()

    def action_back(self) -> None:
        self.app.pop_screen()
