"""``watch`` wakes on file events: real inotify (watchfiles), a real watch
process and a real webhook receiver on 127.0.0.1; and polling where events
are off (``--poll``, ``TUNESCOPE_POLL=1``, object storage, network filesystems)."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
from test_watch import NAN, cli_env, make_watcher, watch_args, write
from webhook_receiver import Receiver

from tunescope.ingest.live.file_events import POLL_ENV, FileEvents, mount_type, polling_reason
from tunescope.train.events import EventWriter
from tunescope.watch import STATE_NAME

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
server:/export /mnt/shared nfs4 rw,relatime 0 0
/dev/sdb1 /mnt/shared/local ext4 rw 0 0
//nas/runs /mnt/my\\040runs cifs rw 0 0
"""


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    return root


def test_mount_type_takes_the_longest_mount_point():
    from pathlib import Path

    assert mount_type(Path("/home/me/runs"), MOUNTS) == "ext4"
    assert mount_type(Path("/mnt/shared/runs"), MOUNTS) == "nfs4"
    assert mount_type(Path("/mnt/shared"), MOUNTS) == "nfs4"
    assert mount_type(Path("/mnt/shared/local/runs"), MOUNTS) == "ext4"
    assert mount_type(Path("/mnt/sharedx"), MOUNTS) == "ext4"  # a prefix, not a folder
    assert mount_type(Path("/mnt/my runs/a"), MOUNTS) == "cifs"


def test_polling_reasons(tmp_path, monkeypatch):
    monkeypatch.delenv(POLL_ENV, raising=False)
    assert polling_reason(tmp_path) is None  # a local folder: events
    assert "object storage" in (polling_reason("s3://bucket/runs", is_url=True) or "")
    monkeypatch.setenv(POLL_ENV, "1")
    assert POLL_ENV in (polling_reason(tmp_path) or "")
    monkeypatch.setenv(POLL_ENV, "0")
    assert polling_reason(tmp_path) is None


def test_file_events_wake_on_logs_not_on_the_cache(runs):
    cache = runs / ".tunescope"
    cache.mkdir()
    events = FileEvents(runs, ignore=[cache])
    try:
        time.sleep(0.3)  # the kernel watch is set up in the thread
        (cache / "manifest.json").write_text("{}")
        assert not events.wait(0.6), "the follower's own cache writes must not wake it"
        with EventWriter(runs / "a") as w:  # a new run folder, then a line in it
            write(w, {1: 2.0})
            assert events.wait(5.0)
            write(w, {2: 2.0})
            assert events.wait(5.0)
        assert events.alive
    finally:
        events.close()
    assert not events.alive


def test_an_idle_watch_on_events_does_not_wake_itself(runs):
    """Each poll writes the cache under the runs root (segments, state): with
    events on, those writes must not start the next poll."""
    with EventWriter(runs / "a") as w:
        write(w, {1: 2.0, 2: NAN})
        watcher = make_watcher(runs, None, interval=60.0)
        assert watcher.polling is None
        stop = threading.Event()
        t = threading.Thread(target=watcher.run, args=(stop,))
        t.start()
        try:
            time.sleep(1.5)
            assert watcher.polls == 1
            write(w, {3: NAN})  # a change: one more poll, soon
            deadline = time.monotonic() + 10
            while watcher.polls < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert watcher.polls == 2
            time.sleep(1.0)
            assert watcher.polls == 2
        finally:
            stop.set()
            t.join(10)
    assert not t.is_alive()


def test_events_off_polls_on_the_interval_only(runs):
    with EventWriter(runs / "a") as w:
        write(w, {1: 2.0})
        watcher = make_watcher(runs, None, interval=60.0, events=False)
        assert watcher.polling == "polling was asked for"
        stop = threading.Event()
        t = threading.Thread(target=watcher.run, args=(stop,))
        t.start()
        try:
            time.sleep(0.5)
            write(w, {2: NAN})
            time.sleep(1.0)
            assert watcher.polls == 1  # the change waits for the next poll, 60 s away
        finally:
            stop.set()
            t.join(10)
    assert not t.is_alive()


def _start_watch(runs, url, *extra, env=None):
    return subprocess.Popen(
        watch_args(runs, url, *extra),
        env=env or cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_first_poll(runs, proc) -> None:
    state = runs / ".tunescope" / STATE_NAME
    deadline = time.monotonic() + 60
    while not state.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the first poll never finished"
        time.sleep(0.05)


def _stop(proc) -> str:
    proc.send_signal(2)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return err


@pytest.mark.slow
def test_cli_watch_delivers_on_a_file_event_long_before_the_next_poll(runs):
    with Receiver() as rx, EventWriter(runs / "a") as w:
        write(w, {1: 2.0})
        proc = _start_watch(runs, rx.url, "--interval", "120")
        try:
            _wait_first_poll(runs, proc)
            t0 = time.monotonic()
            write(w, {2: NAN})
            got = rx.wait_for(1, timeout=30)
            took = time.monotonic() - t0
        finally:
            err = _stop(proc)
    assert len(got) == 1, err
    assert took < 60, f"delivered after {took:.1f}s: by the next poll, not by the event"
    assert got[0].json()["finding"]["step_start"] == 2
    assert "watching" in err and "on file changes and every 120s" in err


@pytest.mark.slow
@pytest.mark.parametrize("how", ["--poll", "env"])
def test_cli_watch_still_polls_when_events_are_off(runs, how):
    env = cli_env()
    extra = ["--interval", "0.3"]
    if how == "env":
        env[POLL_ENV] = "1"
    else:
        extra.append("--poll")
    with Receiver() as rx, EventWriter(runs / "a") as w:
        write(w, {1: 2.0})
        proc = _start_watch(runs, rx.url, *extra, env=env)
        try:
            _wait_first_poll(runs, proc)
            write(w, {2: NAN})
            got = rx.wait_for(1, timeout=30)
        finally:
            err = _stop(proc)
    assert len(got) == 1, err
    assert got[0].json()["finding"]["step_start"] == 2
    assert "on file changes" not in err
    if how == "env":
        assert f"every 0.3s ({POLL_ENV} is set)" in err
    else:
        assert "every 0.3s; Ctrl-C stops" in err
