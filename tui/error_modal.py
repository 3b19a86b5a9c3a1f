"""The one place where a failed worker becomes something the user sees.

Every screen of the app derives from :class:`WorkerScreen`; its single
``on_worker_state_changed`` handler turns a worker that raised into an
:class:`ErrorModal`. User mistakes (:class:`TunescopeError`) show their
message; anything else shows the exception type too, never a traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual import getters, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Static
from textual.worker import Worker, WorkerState

from tunescope.errors import TunescopeError
from tunescope.tui.store_app import StoreApp


def describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    if isinstance(error, TunescopeError):
        return str(error)
    return f"{type(error).__name__}: {error}"


class ErrorModal(ModalScreen[None]):
    """A dismissable box with what went wrong and where."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter", "dismiss", "Close")]

    def __init__(self, title: str, message: str) -> None:
        super().__init__()
        self.title_text = title
        self.message = message

    def compose(self) -> ComposeResult:
        with Vertical(id="error-box"):
            yield Static(self.title_text, id="error-title")
            yield Static(self.message, id="error-message", markup=False)
            yield Button("Close", id="error-close", variant="error")

    @on(Button.Pressed, "#error-close")
    def _close(self) -> None:
        self.dismiss()


class WorkerScreen(Screen[None]):
    """A screen whose workers report failures through one modal handler."""

    if TYPE_CHECKING:  # Textual's way to type ``self.app``: an app over a store
        app = getters.app(StoreApp)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        report_worker_error(self, event)


def report_worker_error(node: Screen | object, event: Worker.StateChanged) -> None:
    """Show a failed worker's error in an :class:`ErrorModal` (once per failure)."""
    if event.state != WorkerState.ERROR:
        return
    worker = event.worker
    app = getattr(node, "app", None)
    if app is None:
        return
    what = worker.description or worker.name or "a background task"
    message = describe(worker.error)
    top = app.screen
    if isinstance(top, ErrorModal) and top.message == message:
        return  # the same failure again (e.g. each live ingest): one modal is enough
    app.push_screen(ErrorModal(f"Failed: {what}", message))
