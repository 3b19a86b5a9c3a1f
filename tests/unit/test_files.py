"""Files written whole or not at all (tunescope/files.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tunescope.files import remove_dead_temps, replacing, temp_beside, write_whole


def test_write_whole_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    write_whole(path, "new", durable=True)
    assert path.read_text() == "new"
    write_whole(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_an_error_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), replacing(path) as tmp:
        tmp.write_text("half")
        assert tmp == temp_beside(path) and tmp.name == f".m.json.{os.getpid()}.tmp"
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_dead_writers_temporaries_go_live_ones_stay(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    (tmp_path / "sub").mkdir()
    dead = tmp_path / "sub" / f".a.json.{child.pid}.tmp"
    live = tmp_path / "sub" / f".b.json.{os.getpid()}.tmp"
    other = tmp_path / "sub" / ".notes.tmp"  # no pid: not ours to judge
    for p in (dead, live, other):
        p.write_text("x")
    assert remove_dead_temps(tmp_path) == 0  # not recursive: the sub-folder is not looked at
    assert remove_dead_temps(tmp_path, recursive=True) == 1
    assert not dead.exists() and live.exists() and other.exists()


def test_write_output_replaces_a_link_and_never_writes_through_it(tmp_path):
    from tunescope.files import write_output

    victim = tmp_path / "elsewhere" / "keep.txt"
    victim.parent.mkdir()
    victim.write_text("keep me")
    link = tmp_path / "report.html"
    link.symlink_to(victim)
    write_output(link, "<html>")
    assert victim.read_text() == "keep me"
    assert not link.is_symlink() and link.read_text() == "<html>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "report.html"]


def test_write_output_streams_into_a_pipe_it_is_pointed_at(tmp_path):
    import os
    import threading

    from tunescope.files import write_output

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_output(fifo, "through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"] and fifo.is_fifo()
