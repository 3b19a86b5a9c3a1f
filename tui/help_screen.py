"""The keys, screen by screen."""

from __future__ import annotations

from typing import ClassVar

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
        ),
    ),
    (
        "Run",
        (
            ("1 2 3", "curves, per-rank times, config"),
            ("n / p", "next / previous finding: its suggestion, curves zoomed to its steps"),
            ("enter", "on a finding: zoom the curves to its step range"),
            ("z", "unzoom"),
            ("m", "smoothing (rolling mean) on the loss"),
            ("l", "log scale on the loss"),
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


def help_text() -> Text:
    text = Text()
    text.append("tunescope keys\n", style="bold")
    for section, keys in KEYS:
        text.append(f"\n{section}\n", style="bold underline")
        for key, does in keys:
            text.append(f"  {key:<8}", style="bold #4ea1ff")
            text.append(f" {does}\n")
    text.append("\n" + NOTES + "\n", style="dim")
    return text


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(help_text(), id="help-text")
