"""The keys, screen by screen."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# tunescope keys

**Everywhere**: `?` this help · `s` SQL · `q` quit · `escape` back.
The mouse works too: click rows, tabs, findings and buttons; scroll with the wheel.

## Runs
- `enter` or a click: open the run
- `/`: filter by name (`escape` clears)
- `f`: cycle the status filter (running, completed, failed, interrupted, all)
- `x`: only runs with findings
- `o` / `O`: cycle the sort (name, status, findings, steps, loss) / reverse it
- `space`: mark a run; `c`: compare the marked runs

## Run
- `1` `2` `3`: curves, per-rank times, config
- `n` / `p`: next / previous finding: its suggestion, and the curves zoomed to its steps
- `enter` on a finding: zoom the curves to its step range; `z` unzooms
- `m`: smoothing (rolling mean) on the loss; `l`: log scale on the loss

Finding ranges are tinted on every curve and marked `▲━━` under it; `×` marks NaN or Inf.
The Ranks tab colours each rank's compute time against the other ranks' median in the
same step window: a straggler is the row that stays orange or red.

## Compare
Tick runs on the left (`space` or a click) and choose the metric above the plot;
`m` smooths, `l` switches to a log scale.

## SQL
Type SQL and press `enter`; `]` / `[` (or the buttons) page the result; `ctrl+l` edits the SQL.
Views: `runs`, `steps`, `metrics`, `events`, `findings`. Read-only: nothing can be written.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"), VerticalScroll():
            yield Markdown(HELP, id="help-text")
