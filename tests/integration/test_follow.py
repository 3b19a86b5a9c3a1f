"""The follower of live runs that `watch` and the TUI share, over real files and
a real DuckDB store."""

from __future__ import annotations

from pathlib import Path

from tunescope.ingest.live.follow import Follower
from tunescope.ingest.store.database import Store
from tunescope.train.events import EventWriter


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def write(root: Path, run: str, steps: range, end: bool = False) -> None:
    with EventWriter(root / run, rank=0) as w:
        for s in steps:
            w.step(step=s, loss=2.0, lr=1e-4)
        if end:
            w.run_end("completed")


def test_first_poll_names_every_run_then_only_the_ones_that_changed(tmp_path: Path) -> None:
    write(tmp_path, "a", range(1, 11))
    write(tmp_path, "b", range(1, 11))
    follower = Follower(Store(tmp_path))
    assert follower.poll() == ["a", "b"]
    assert follower.poll() == []  # nothing new anywhere
    write(tmp_path, "b", range(11, 21))
    assert follower.poll() == ["b"]
    write(tmp_path, "a", range(0), end=True)  # a run_end only: no step figure moves
    assert follower.poll() == ["a"]
    write(tmp_path, "c", range(1, 3))
    assert follower.poll() == ["c"]
    assert follower.polls == 5


def test_runs_another_store_ingested_are_seen(tmp_path: Path) -> None:
    """Another reader of the same cache (another process, in practice) reads the
    new lines first: this store's own ingest finds nothing new, and the run is
    still reported, at once."""
    write(tmp_path, "a", range(1, 11))
    mine = Store(tmp_path)
    follower = Follower(mine, clock=Clock())  # a frozen clock: no periodic reload
    follower.poll()
    write(tmp_path, "a", range(11, 16))
    write(tmp_path, "new", range(1, 4))
    other = Store(tmp_path)
    other.ingest()
    assert other.last_report.modified
    assert follower.poll() == ["a", "new"]
    assert not mine.last_report.modified  # read by the other store, not by this one


def test_baseline_reports_only_later_changes_and_reloads_follow_the_clock(
    tmp_path: Path,
) -> None:
    write(tmp_path, "a", range(1, 11))
    store = Store.open(tmp_path)
    clock = Clock()
    follower = Follower(store, refresh_every=30.0, clock=clock)
    follower.baseline()
    assert follower.poll() == []
    loaded = store.loaded_at
    clock.t += 31  # statuses are derived from the clock at a reload
    assert follower.poll() == []
    assert store.loaded_at > loaded  # reloaded although no file changed
