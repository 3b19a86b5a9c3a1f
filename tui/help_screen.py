"""The keys, screen by screen."""

from __future__ import annotations

from typing import ClassVar

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Everywhere",
        (
            ("?", "this help"),
            ("s", "SQL over the runs"),
            ("escape", "back"),
            ("q", "quit"),
            ("mouse", "click rows, tabs, findings and buttons; the wheel scrolls"),
        ),
    ),
    (
        "Runs",
        (
            ("enter", "open the run (or click it)"),
            ("/", "filter by name; escape clears"),
            ("f", "cycle the status filter: running, completed, failed, interrupted, all"),
            ("x", "only runs with findings"),
            ("o / O", "cycle the sort (name, status, findings, steps, loss) / reverse it"),
            ("header", "click a column header to sort by it; click again to reverse"),
            ("space", "mark a run for comparison"),
            ("c", "compare the marked runs"),
            ("home / end", "first / last run (pgup / pgdn: a page)"),
            ("r", "write the HTML report of the marked runs (else this run) here"),
        ),
    ),
    (
        "Run",
        (
            ("1 2 3", "curves, per-rank times, config"),
            ("n / p", "next / previous finding: its suggestion, curves zoomed to its steps"),
            ("enter", "on a finding: zoom the curves to its step range"),
            ("z", "unzoom"),
            ("w", "widen the findings panel to read long messages; again to narrow it"),
            ("m", "smoothing (rolling mean) on the loss"),
            ("l", "log scale on the loss"),
            ("r", "write this run's HTML report (tunescope-report-RUN.html) here"),
        ),
    ),
    (
        "Compare",
        (
            ("space", "tick or untick a run in the list (or click it)"),
            ("metric", "choose it in the box above the plot"),
            ("m / l", "smoothing / log scale"),
        ),
    ),
    (
        "SQL",
        (
            ("enter", "run the SQL (views: runs, steps, metrics, events, findings)"),
            ("] / [", "next / previous page of the result (or the buttons)"),
            ("ctrl+l", "back to the SQL box"),
        ),
    ),
)

NOTES = (
    "On the curves, a finding's step range is tinted and marked ▲━━ under the axis; "
    "× marks NaN or Inf values. The Ranks tab colours each rank's compute time against "
    "the other ranks' median in the same step window: a straggler is the row that stays "
    "orange or red. SQL is read-only: nothing can be written."
)


def help_plain() -> str:
    """The help as plain text (what the screen shows, without styles)."""
    lines = ["tunescope keys"]
    for section, keys in KEYS:
        lines += ["", section, *(f"  {k:<8} {d}" for k, d in keys)]
    return "\n".join([*lines, "", NOTES])


def help_renderable() -> Group:
    parts: list[RenderableType] = [Text("tunescope keys", style="bold")]
    for section, keys in KEYS:
        parts.append(Text(f"\n{section}", style="bold underline"))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold #4ea1ff", no_wrap=True, min_width=10)
        grid.add_column(ratio=1)
        for key, does in keys:
            grid.add_row(f"  {key}", does)
        parts.append(grid)
    parts.append(Text("\n" + NOTES, style="dim"))
    return Group(*parts)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(help_renderable(), id="help-text")
