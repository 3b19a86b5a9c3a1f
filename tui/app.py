"""``TunescopeApp``: the Textual front end over a :class:`~tunescope.ingest.store.database.Store`.

The app receives its store (tests hand it one built from fixtures). It owns
only what is app-wide: the live ingest and analysis worker (which follows the
runs with the same :class:`~tunescope.ingest.live.follow.Follower` as ``tunescope
watch``, so it sees runs that another process ingested too), the global keys
and the forwarding of :class:`StoreChanged` to the screens. Each screen owns
its own queries, workers and handlers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from textual import work
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.worker import Worker

from tunescope.ingest.live.follow import Follower
from tunescope.tui.error_modal import report_worker_error
from tunescope.tui.messages import AnalyzeFailed, StoreChanged
from tunescope.tui.runs_screen import RunsScreen
from tunescope.tui.store_app import StoreApp

if TYPE_CHECKING:
    from tunescope.analysis import Detect
    from tunescope.config import Config
    from tunescope.ingest.store.database import Store


class TunescopeApp(StoreApp):
    """Runs, curves, findings and SQL over one store.

    Args:
        store: the store to show (already ingested).
        live: ingest new log lines every ``interval`` seconds in a worker.
        analyze: run the detectors on start and on the runs that changed, and
            store their findings (:func:`~tunescope.analysis.analyze_store`);
            False: show the stored findings only.
        detector_config: the detectors' configuration (thresholds, select,
            ignore); None: their defaults.
        detect: an analysis function in place of the detectors (tests).
        clock: the timer used for query durations (tests pin it).
    """

    CSS_PATH = "tunescope.tcss"
    TITLE = "tunescope"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help"),
        Binding("s", "sql", "SQL", show=False),  # shown in the runs screen's footer
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        store: Store,
        *,
        live: bool = True,
        interval: float = 2.0,
        analyze: bool = True,
        detector_config: Config | None = None,
        detect: Detect | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        self.store = store
        self.live = live
        self.interval = interval
        self.clock = clock
        self.analyze = analyze
        self.detect = detect
        self.detector_config = detector_config
        self._updating = False
        self.analysing = analyze
        """True until the first analysis has stored its findings (the runs list says so)."""
        self.follower = Follower(store)

    def get_default_screen(self) -> Screen:
        return RunsScreen()

    def on_mount(self) -> None:
        if self.analyze or self.live:
            self._start_update(initial=True)
        if self.live:
            self.set_interval(self.interval, self._tick)

    # ---- live ingest and analysis ----------------------------------------------

    def _tick(self) -> None:
        if not self._updating:
            self._start_update(initial=False)

    def _start_update(self, initial: bool) -> None:
        self._updating = True
        self.update_store(initial)

    @work(thread=True, exclusive=True, group="live", exit_on_error=False,
          description="live ingest")  # fmt: skip
    def update_store(self, initial: bool) -> None:
        try:
            store = self.store
            changed: list[str] = []
            if initial:
                self.follower.baseline()  # what the screens show now
            else:
                changed = self.follower.poll()
                if changed:
                    self.post_message(StoreChanged(changed))
            if self.analyze and (initial or changed):
                from tunescope.analysis import analyze_store  # pulls in numpy and polars

                try:  # stored as `tunescope analyze` stores them
                    analysis = analyze_store(
                        store,
                        self.detector_config,
                        run_ids=None if initial else changed,
                        detect=self.detect,
                    )
                except Exception as e:  # a detector bug must not stop live ingest
                    self.analysing = False
                    self.post_message(AnalyzeFailed(f"{type(e).__name__}: {e}"))
                    return
                self.analysing = False
                self.post_message(StoreChanged(analysis.run_ids, findings_only=True))
        finally:
            self._updating = False

    @property
    def ingests(self) -> int:
        """Live polls done so far."""
        return self.follower.polls

    def on_store_changed(self, message: StoreChanged) -> None:
        for screen in self.screen_stack:
            screen.post_message(StoreChanged(message.run_ids, message.findings_only))

    def on_analyze_failed(self, message: AnalyzeFailed) -> None:
        self.notify(f"detectors failed: {message.error}", severity="error", timeout=8)
        for screen in self.screen_stack:  # "analysing…" gives way to what is stored
            screen.post_message(StoreChanged([], findings_only=True))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        report_worker_error(self, event)

    # ---- global actions ----------------------------------------------------------

    def action_help(self) -> None:
        from tunescope.tui.help_screen import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_sql(self) -> None:
        from tunescope.tui.sql_screen import SqlScreen

        if not isinstance(self.screen, SqlScreen):
            self.push_screen(SqlScreen())
