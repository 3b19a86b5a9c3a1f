"""Files written whole or not at all: a temporary name beside the target,
then one atomic rename.

Readers (another process, a crash's survivor) see the old file or the new
one, never half of one. Temporary names carry the writer's process id,
``.NAME.PID.tmp``, so a cache can tell a live writer's leftovers from a dead
one's (:func:`remove_dead_temps`, used by the cache and the S3 mirror).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path


def temp_beside(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends, the file
    written there replaces ``path``. On an error (or Ctrl-C) the temporary
    file is removed and ``path`` is untouched."""
    tmp = temp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_whole(path: Path, data: str | bytes, *, durable: bool = False) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` whole or not at all;
    ``durable`` also flushes it to the disk before the rename (journals that
    must survive a power loss, such as the alert outbox)."""
    body = data.encode("utf-8") if isinstance(data, str) else data
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(body)
        if durable:
            f.flush()
            os.fsync(f.fileno())


def write_output(path: Path, data: str | bytes) -> None:
    """Write a user's output file (``-o FILE``) whole. A regular file, a
    symbolic link or a new name is replaced by a file written beside it and
    renamed (a link is replaced, never written through); a device or a pipe
    that the name leads to (``/dev/stdout``, a FIFO) is written to as it is."""
    try:
        mode = os.stat(path).st_mode  # follows a link: where would the bytes go?
    except OSError:
        mode = None
    if mode is not None and (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
        with open(path, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        return
    write_whole(path, data)


def remove_dead_temps(folder: Path, pattern: str = ".*.tmp", *, recursive: bool = False) -> int:
    """Remove the temporary files (``.NAME.PID.tmp``) that processes which no
    longer run left in ``folder`` (and below it, ``recursive``); a live
    writer's are kept. Returns how many went."""
    gone = 0
    with contextlib.suppress(OSError):
        found = folder.rglob(pattern) if recursive else folder.glob(pattern)
        for path in list(found):
            pid = path.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not _pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    path.unlink()
                    gone += 1
    return gone


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive, but another user's (or unknowable): leave its files
    return True
