"""Store.query_page: one page of a user's SELECT, read-only like Store.query."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunescope.errors import UsageError
from tunescope.ingest.store.database import Store
from tunescope.train.events import EventWriter


@pytest.fixture
def store(tmp_path: Path):
    root = tmp_path / "runs"
    for name in ("runA", "runB"):
        with EventWriter(root / name) as w:
            w.run_start(model="tiny", finetuning_type="lora", total_steps=10)
            for s in range(1, 11):
                w.step(step=s, loss=2.0 / s, lr=1e-4)
            w.run_end("completed")
    st = Store.open(root, cache_dir=tmp_path / "cache")
    yield st
    st.close()


SQL = "SELECT run_id, step FROM steps ORDER BY run_id, step;"


def test_a_page_is_the_slice_of_the_whole_result(store):
    whole = store.query(SQL).to_pylist()
    assert len(whole) == 20
    assert store.query_page(SQL, 7, 14).to_pylist() == whole[14:]
    assert store.query_page(SQL, 5, 0).to_pylist() == whole[:5]
    assert store.query_page(SQL, 5, 40).num_rows == 0


def test_what_cannot_be_paged_is_left_to_query(store):
    for sql in ("EXPLAIN SELECT 1", "SELECT 1; SELECT 2", "PRAGMA version"):
        assert store.query_page(sql, 5, 0) is None
        assert store.query(sql).num_rows >= 1


def test_a_page_is_read_only(store, tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(UsageError, match="refused"):
        store.query_page(f"COPY (SELECT 1) TO '{target}'", 5, 0)
    assert store.query_page(f"SELECT * FROM read_csv('{target}')", 5, 0) is None
    assert not target.exists()
