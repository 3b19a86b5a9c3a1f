"""Waking a follower of live runs when a file under its root changes.

``FileEvents(root, ignore=[cache_dir])`` asks the kernel (inotify, through the
``watchfiles`` package) to report changes under the runs root, in a thread, and
:meth:`FileEvents.wait` returns as soon as one arrives. The follower still polls
on its interval: the events only wake it sooner, so a change the kernel never
reports (a file written by another host of a network filesystem) is still
found at the next poll.

:func:`polling_reason` says when events cannot be had and polling alone is
used: runs on object storage (``s3://``), a network filesystem (NFS, SMB,
sshfs, ...), ``watchfiles`` not installed, or ``TUNESCOPE_POLL=1`` in the
environment.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

POLL_ENV = "TUNESCOPE_POLL"

# Filesystems whose changes made elsewhere never reach this host's inotify.
NETWORK_FS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs",
        "lustre", "gpfs", "beegfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone",
        "fuse.glusterfs", "fuse.juicefs", "fuse.cephfs", "fuse.goofys", "fuse.mountpoint-s3",
    }
)  # fmt: skip

# After a change, wait this long for the writes that come with it (one step
# writes a line to each rank file), then wake; at most this long in all.
STEP_MS = 20
DEBOUNCE_MS = 100


def mount_type(path: Path, mounts: str) -> str | None:
    """The filesystem type of ``path`` from the text of ``/proc/self/mounts``
    (the mount point that is the longest prefix of ``path`` wins)."""
    best, kind = -1, None
    target = str(path)
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, kind = len(point), fields[2]
    return kind


def polling_reason(root: str | os.PathLike[str], *, is_url: bool = False) -> str | None:
    """Why the runs under ``root`` must be polled (None: file events can wake
    the follower)."""
    if os.environ.get(POLL_ENV, "").strip() not in ("", "0"):
        return f"{POLL_ENV} is set"
    if is_url:
        return "object storage sends no file events"
    if importlib.util.find_spec("watchfiles") is None:
        return "the watchfiles package is not installed"
    try:
        mounts = Path("/proc/self/mounts").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None  # not Linux: watchfiles uses the platform's own events
    kind = mount_type(Path(root).resolve(), mounts)
    if kind in NETWORK_FS:
        return f"{root} is on {kind}, a network filesystem whose changes raise no events here"
    return None


class FileEvents:
    """Changes under ``root`` (except under the ``ignore`` folders: the cache
    the follower itself writes), reported by a thread that waits on the kernel.

    When the kernel refuses to watch (too many watches: see
    ``fs.inotify.max_user_watches``) or the watch breaks, the thread ends with
    ``error`` set and :attr:`alive` turns False: the follower polls on.
    """

    def __init__(self, root: str | os.PathLike[str], ignore: Iterable[str | os.PathLike[str]] = ()):
        import watchfiles

        self.root = Path(root).resolve()
        self._ignore = tuple(str(Path(p).resolve()) for p in ignore)
        self._changed = threading.Event()
        self._closed = threading.Event()
        self.error: BaseException | None = None
        self._events = watchfiles.watch(
            self.root,
            watch_filter=self._wanted,
            debounce=DEBOUNCE_MS,
            step=STEP_MS,
            stop_event=self._closed,
            rust_timeout=1000,  # the thread looks at ``_closed`` at least every second
            yield_on_timeout=True,
            raise_interrupt=False,
            ignore_permission_denied=True,
        )
        self._thread = threading.Thread(target=self._run, name="file-events", daemon=True)
        self._thread.start()

    def _wanted(self, change: object, path: str) -> bool:
        return not any(path == p or path.startswith(p + os.sep) for p in self._ignore)

    def _run(self) -> None:
        try:
            for changes in self._events:
                if changes:
                    self._changed.set()
        except Exception as e:  # the kernel watch broke: the follower goes on polling
            self.error = e
        finally:
            self._changed.set()  # wake a waiter, which then sees ``alive`` is False

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed.is_set()

    def wait(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Wait up to ``timeout`` seconds for a change (or ``stop``); True when
        files changed since the last wait."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            left = deadline - time.monotonic()
            # Slices, so that ``stop`` (set by a signal handler) is seen quickly.
            if self._changed.wait(max(0.0, min(left, 0.1))):
                self._changed.clear()
                return self.alive
            if left <= 0.1 or (stop is not None and stop.is_set()):
                return False

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2.0)
