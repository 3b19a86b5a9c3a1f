"""The hung-rank watchdog on its own (no training): it judges against the
recent step time, fires once per stall, and a hold (a checkpoint or an
evaluation under way) is not a hang."""

from __future__ import annotations

import time

from tunescope.train.watchdog import Watchdog


def _wait_for(cond, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_a_stall_fires_once_a_hold_does_not_and_progress_rearms():
    fired: list[tuple[int, float, float]] = []
    dog = Watchdog(3, 0.3, lambda step, waited, typical: fired.append((step, waited, typical)))
    dog.start()
    try:
        assert dog.limit() is None  # too few steps to judge
        for step in range(1, 6):
            time.sleep(0.02)
            dog.beat(step)
        assert dog.limit() == 0.3  # 3 x ~0.02 s is under the floor
        dog.hold()  # e.g. a checkpoint being written
        time.sleep(1.0)
        assert fired == []
        dog.beat()  # the save ended: judged again from now
        assert _wait_for(lambda: fired)
        step, waited, typical = fired[0]
        assert step == 5 and waited > 0.3 and 0.01 < typical < 0.3
        time.sleep(0.5)
        assert len(fired) == 1  # once per stall
        dog.beat(6)  # progress again, then another stall fires again
        assert _wait_for(lambda: len(fired) == 2)
        assert fired[1][0] == 6
    finally:
        dog.stop()
