"""Read-only SQL over the store's views, results paged into a table.

A single SELECT is fetched one page at a time (``Store.query_page``, run
again for each page), so that
``SELECT * FROM metrics`` on a big store never loads every row; the total is
shown once the last page is reached. EXPLAIN, PRAGMA and several statements
run as they are and their (small) result is paged on screen.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, Footer, Header, Input, Static
from textual.worker import get_current_worker

from tunescope import numbers
from tunescope.errors import TunescopeError
from tunescope.ingest.store.duck import python_rows
from tunescope.tui.error_modal import WorkerScreen
from tunescope.tui.messages import QueryDone, QueryFailed
from tunescope.tui.row_table import RowTable

PAGE = 100  # rows in the table at a time
EXAMPLE = "SELECT run_id, status, steps_logged, last_loss FROM runs ORDER BY run_id"


def cell(value: object) -> str:
    text = numbers.cell(value, ".6g", none="NULL")
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
        """The page on screen (paged), or the whole result (EXPLAIN, PRAGMA, ...)."""
        self.sql = ""
        self.paged = False
        self.more = False
        self.page = 0
        self.seconds = 0.0
        self.error = ""
        self.fetched_rows = 0
        """Rows the worker fetched from DuckDB for the current query (all pages so far)."""

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
        yield RowTable(id="sql-table", zebra_stripes=True)
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
        status = self.query_one("#sql-status", Static)
        if not sql:
            status.update(Text(f"type a query, e.g. {EXAMPLE}", style="#ffb000"))
            return
        status.update(Text("running…", style="dim"))
        self.run_sql(sql, 0, new_query=True)

    @work(thread=True, exclusive=True, group="sql", exit_on_error=False, description="running SQL")
    def run_sql(self, sql: str, page: int, new_query: bool = False) -> None:
        store = self.app.store
        clock = self.app.clock
        t0 = clock()
        cur = store.cursor()
        try:
            done = self._fetch(store, cur, sql, page, new_query)
        except TunescopeError as e:  # the user's mistake: shown inline, not as a modal
            if not get_current_worker().is_cancelled:
                self.post_message(QueryFailed(str(e)))
            return
        finally:
            cur.close()
        done.seconds = clock() - t0
        if not get_current_worker().is_cancelled:
            self.post_message(done)

    def _fetch(self, store: Any, cur: Any, sql: str, page: int, new_query: bool) -> QueryDone:
        """One page of a single SELECT (one row more than a page, to know
        whether another follows); the whole result for anything else."""
        table = store.query_page(sql, PAGE + 1, page * PAGE, con=cur)
        if table is not None:
            self.fetched_rows = table.num_rows + (0 if new_query else self.fetched_rows)
            more = table.num_rows > PAGE
            return QueryDone(
                table.slice(0, PAGE), 0.0, True, page, more, new_query=new_query, sql=sql
            )
        table = store.query(sql, con=cur)
        self.fetched_rows = table.num_rows
        return QueryDone(table, 0.0, new_query=True, sql=sql)

    def on_query_done(self, message: QueryDone) -> None:
        self.result = message.table
        self.seconds = message.seconds
        self.error = ""
        self.paged = message.paged
        self.more = message.more
        self.page = message.page
        table = self.query_one("#sql-table", DataTable)
        if message.new_query:
            self.sql = message.sql
            table.clear(columns=True)
            for name in message.table.column_names:
                table.add_column(name, key=name)
            # the result takes the keys, so ] and [ page it (ctrl+l edits the SQL again);
            # after an error the focus stays in the query to fix it
            table.focus()
        self._show_page()

    def on_query_failed(self, message: QueryFailed) -> None:
        # the rows of the previous query would read as this one's: cleared
        self.error = message.error
        self.result = None
        self.sql = ""
        self.paged = self.more = False
        self.page = 0
        self.query_one("#sql-table", DataTable).clear(columns=True)
        self.query_one("#sql-page", Static).update("")
        self.query_one("#sql-status", Static).update(
            Text(f"error: {message.error}", style="bold #ff4d4d")
        )

    def _show_page(self) -> None:
        result = self.result
        if result is None:
            return
        if self.paged:
            chunk = result
            start = self.page * PAGE
            n = None if self.more else start + chunk.num_rows
            pages = None if self.more else self.page + 1
        else:
            n = result.num_rows
            pages = max(1, -(-n // PAGE))
            self.page = max(0, min(self.page, pages - 1))
            start = self.page * PAGE
            chunk = result.slice(start, PAGE)
        table = self.query_one("#sql-table", DataTable)
        table.clear()
        table.add_rows([cell(v) for v in row] for row in python_rows(chunk))
        ms = f"in {self.seconds * 1000:.0f} ms"
        if n is None:
            status = f"more than {start + chunk.num_rows:,} rows (page {self.page + 1}) {ms}"
        else:
            status = f"{n:,} row{'s' if n != 1 else ''} {ms}"
        self.query_one("#sql-status", Static).update(Text(status, style="#3ccf91"))
        if n is None:
            shown = f"rows {start + 1:,}–{start + chunk.num_rows:,} · page {self.page + 1} · ] next"
        else:
            rows = f"rows {start + 1:,}–{start + chunk.num_rows:,} of {n:,}" if n else "no rows"
            shown = f"{rows} · page {self.page + 1}/{pages}"
        self.query_one("#sql-page", Static).update(f" {shown} ")

    def action_page(self, delta: int) -> None:
        if not self.paged:
            self.page += delta
            self._show_page()
            return
        page = self.page + delta
        if page < 0 or (delta > 0 and not self.more) or not self.sql:
            return
        self.query_one("#sql-status", Static).update(Text(f"loading page {page + 1}…", style="dim"))
        self.run_sql(self.sql, page)

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
