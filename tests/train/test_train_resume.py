"""Resume restores weights, optimizer, scheduler, RNG and step; the log continues."""

from __future__ import annotations

import pytest
from train_helpers import events, kinds, tiny_config

pytestmark = pytest.mark.slow


def test_resume_continues_the_step_count_and_the_same_log(tmp_path):
    from tunescope.ingest.store.database import Store
    from tunescope.train.trainer import train

    run = tmp_path / "resumed"
    assert train(tiny_config(run, max_steps=10, save_steps=4, stop_at_step=6)) == 0
    first = [e for e in events(run) if e["kind"] == "step"]
    assert [e["step"] for e in first] == [1, 2, 3, 4, 5, 6]
    assert kinds(run)[-1] == "run_end" and events(run)[-1]["status"] == "interrupted"
    assert (run / "checkpoint-4").is_dir()

    assert train(tiny_config(run, max_steps=10, save_steps=4, resume_from_checkpoint="latest")) == 0
    ev = events(run)
    assert sum(1 for e in ev if e["kind"] == "run_start") == 1  # one run, one log
    resume = [e for e in ev if e["kind"] == "resume"]
    assert len(resume) == 1
    assert resume[0]["step"] == 4 and resume[0]["checkpoint"].endswith("checkpoint-4")
    after = [e for e in ev[ev.index(resume[0]) :] if e["kind"] == "step"]
    assert [e["step"] for e in after] == [5, 6, 7, 8, 9, 10]
    assert ev[-1]["kind"] == "run_end" and ev[-1]["status"] == "completed"

    # An exact resume replays steps 5-6 as they were the first time.
    redo = {e["step"]: e for e in after}
    for e in first[4:]:
        assert redo[e["step"]]["loss"] == pytest.approx(e["loss"], abs=1e-4)
        assert redo[e["step"]]["lr"] == pytest.approx(e["lr"], rel=1e-6)
        assert redo[e["step"]]["sample_ids"] == e["sample_ids"]

    store = Store.open(tmp_path)
    cur = store.cursor()
    n, last = cur.execute("SELECT count(*), max(step) FROM steps").fetchone()
    assert (n, last) == (10, 10)  # the newest write of steps 5-6 wins
    assert cur.execute("SELECT status FROM runs").fetchone()[0] == "completed"
