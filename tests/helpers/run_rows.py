"""Reading a store's rows back in tests: a run's loss span, status and
``run_start`` payload."""

from __future__ import annotations

import json
from pathlib import Path

from tunescope.ingest.store.database import Store


def open_store(root: Path, tmp_path: Path) -> Store:
    return Store.open(root, cache_dir=tmp_path / "cache")


def rows(store: Store, sql: str, params=None) -> list[tuple]:
    return store.cursor().execute(sql, params or []).fetchall()


def one(store: Store, sql: str, params=None):
    return rows(store, sql, params)[0][0]


def span(store: Store, run_id: str) -> tuple:
    return rows(
        store,
        "SELECT count(*), min(step), max(step), arg_min(loss, step), arg_max(loss, step) "
        "FROM steps WHERE run_id = ? AND rank = 0 AND loss IS NOT NULL",
        [run_id],
    )[0]


def status(store: Store, run_id: str) -> str:
    return one(store, "SELECT status FROM runs WHERE run_id = ?", [run_id])


def start_payload(store: Store, run_id: str) -> dict:
    got = rows(
        store,
        "SELECT payload::VARCHAR FROM events WHERE run_id = ? AND kind = 'run_start'",
        [run_id],
    )
    assert len(got) == 1, got
    return json.loads(got[0][0])
