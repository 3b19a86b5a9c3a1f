"""Progress of long work on stderr: a rich progress bar on a terminal, nothing
in CI, in a pipe or in a file (stdout stays data).

    with Progress("ingest", "{task.fields[files]} files", in_bytes=True) as bar:
        bar.update(12_000_000, total=80_000_000, files=3)
"""

from __future__ import annotations

import os
import sys
from typing import Any


def wanted() -> bool:
    """Progress is shown only to a person: stderr a terminal, not CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


class Progress:
    """One task's bar (rich's, on stderr), shown only when :func:`wanted`;
    it goes away when the work is done. ``detail`` is a rich column template
    over the fields given to :meth:`update`; ``in_bytes`` shows the amount and
    speed as bytes."""

    def __init__(
        self, what: str, detail: str = "", in_bytes: bool = False, enabled: bool | None = None
    ) -> None:
        self.what, self.detail, self.in_bytes = what, detail, in_bytes
        self.enabled = wanted() if enabled is None else enabled
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, completed: float, total: float | None = None, **fields: Any) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from rich import progress as rp
            from rich.console import Console

            amount = (
                [rp.DownloadColumn(), rp.TransferSpeedColumn()]
                if self.in_bytes
                else [rp.MofNCompleteColumn()]
            )
            self._bar = rp.Progress(
                rp.TextColumn(self.what),
                rp.BarColumn(),
                *amount,
                rp.TextColumn(self.detail),
                rp.TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=total, **fields)
        self._bar.update(self._task, completed=completed, total=total, **fields)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
