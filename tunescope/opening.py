"""Opening a runs root for a command: ingest what is new (with a progress bar
on a terminal), then one line on stderr when lines were skipped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from tunescope.errors import CacheChanged, StoreError
from tunescope.progress import Progress
from tunescope.say import say
from tunescope.words import count

if TYPE_CHECKING:
    from tunescope.ingest.store.cache import IngestReport
    from tunescope.ingest.store.database import Store

T = TypeVar("T")


def ingest_progress(enabled: bool | None = None) -> Progress:
    """The bar of an ingest: bytes read, files, rows (on a terminal only)."""
    return Progress(
        "ingest",
        "{task.fields[files]:,}/{task.fields[of]:,} files · {task.fields[rows]:,} rows",
        in_bytes=True,
        enabled=enabled,
    )


def open_store(runs: str | Path, cache_dir: str | Path | None, quiet: bool = False) -> Store:
    """Ingest ``runs`` and return the store; progress and a note about skipped
    lines on stderr unless ``quiet``."""
    from tunescope.ingest.store.database import Store

    with ingest_progress(enabled=False if quiet else None) as bar:
        store = Store.open(runs, cache_dir, progress=bar.update)
    report = store.last_report
    if report is not None and report.problems and not quiet:
        say(
            f"{count(report.skipped, 'line or file', 'lines or files')} skipped; "
            f"`tunescope ingest {runs}` lists them"
        )
    return store


def with_store(
    runs: str | Path, cache_dir: str | Path | None, work: Callable[[Store], T], quiet: bool = False
) -> T:
    """Open the store of ``runs``, return ``work(store)`` and close it. When the
    cache's files changed under it (another process rebuilt the cache, or its
    segments were deleted or cut short), the store is opened again (the
    ingest rebuilds what is missing) and ``work`` runs once more; a second
    such failure is one :class:`StoreError` line (exit 2), never a traceback
    or the exit code of findings."""
    attempt = 1
    while True:
        store = None
        try:
            store = open_store(runs, cache_dir, quiet=quiet or attempt == 2)
            return work(store)
        except Exception as e:
            changed = isinstance(e, CacheChanged) or (store is not None and store.vanished())
            if not changed:
                raise
            where = store.cache.dir if store is not None else runs
            if attempt == 2:
                raise StoreError(
                    f"the cache of {runs} changed again while it was read ({where}); another "
                    "tunescope process may be rebuilding it: run the command again when it is done"
                ) from None
            say(f"the cache in {where} changed while it was read; reading it again")
            attempt = 2
        finally:
            if store is not None:
                store.close()


def unread_files(report: IngestReport | None, runs: str | Path, shown: int = 3) -> str | None:
    """The files no reader took, named (the first ``shown``) and counted, with
    the command that says why; None when every file was read."""
    if report is None or not report.unclaimed:
        return None
    root = Path(runs)
    names = []
    for path, _ in report.unclaimed[:shown]:
        try:
            names.append(str(Path(path).relative_to(root)))
        except ValueError:
            names.append(Path(path).name)
    more = len(report.unclaimed) - len(names)
    listed = ", ".join(names) + (f" and {more} more" if more else "")
    return (
        f"{count(len(report.unclaimed), 'file')} no reader took ({listed}); "
        f"`tunescope ingest {runs} --verbose` says why"
    )
