"""Shipping a run's event files from a local spool to object storage.

The ``EventWriter`` always writes locally (the spool: ``RUN_DIR/events/``);
an ``Uploader`` copies the spool to a URL (``s3://bucket/prefix/RUN``, or any
fsspec URL) on a background thread, so training never waits on the network:

- each closed Parquet segment (``rank-N-SEQ.parquet``, written whole by
  ``compact()``) is uploaded once;
- the JSONL log is uploaded again every ``interval_s`` seconds when it grew
  (object stores have no append: the object is replaced; tunescope's ingest
  reads only its new bytes);
- ``close()`` uploads what is left and waits for it.

A crash loses at most the last interval of the uploaded copy, never the
spool, and the objects that land are the same files as a local run has. A
failed upload is retried at the next interval and reported once on stderr;
it never stops training. Credentials come from the cloud's own chain.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

_SEGMENT = re.compile(r"rank-\d+-\d+\.parquet")


class Uploader:
    """Copies ``spool`` (a run's ``events/`` folder) to ``url`` + ``/events/``.

    ``uploads`` counts the objects written, for tests.
    """

    def __init__(
        self, spool: str | Path, url: str, interval_s: float = 30.0, rank: int | None = None
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"upload interval must be > 0 seconds, got {interval_s}")
        try:
            import fsspec
        except ImportError:
            raise ValueError(
                f"uploading to {url} needs fsspec and the cloud's package: "
                "pip install 'tunescope[s3]'"
            ) from None
        self.spool = Path(spool)
        self.url = url.rstrip("/")
        self.interval_s = interval_s
        # one writer per rank, each shipping its own files only
        who = str(rank) if rank is not None else r"\d+"
        self._mine = re.compile(rf"rank-{who}(\.jsonl|-\d+\.parquet)")
        self.fs, self.path = fsspec.core.url_to_fs(self.url)
        self.uploads = 0
        self._sent: dict[str, int] = {}  # file name -> size uploaded
        self._warned = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="tunescope-upload", daemon=True)
        self._thread.start()

    def sync(self) -> None:
        """Upload what changed in the spool since the last sync."""
        with self._lock:
            for path in sorted(self.spool.glob("*")):
                name = path.name
                if not path.is_file() or not self._mine.fullmatch(name):
                    continue
                size = path.stat().st_size
                if _SEGMENT.fullmatch(name):
                    if name in self._sent:
                        continue  # segments are written whole, once
                elif not name.endswith(".jsonl") or self._sent.get(name) == size:
                    continue
                # read first, then put: the bytes sent are a prefix of the file
                # ending where the writer had flushed (whole lines but the last)
                data = path.read_bytes()
                self.fs.pipe_file(f"{self.path}/events/{name}", data)
                self._sent[name] = len(data)
                self.uploads += 1

    def close(self) -> None:
        """Stop the thread and upload what is left (errors are raised here)."""
        self._stop.set()
        self._thread.join()
        self.sync()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sync()
            except Exception as e:  # the network is down: try at the next interval
                self._report(e)

    def _report(self, e: BaseException) -> None:
        if self._warned:
            return
        self._warned = True
        from tunescope.say import say

        say(
            f"cannot upload {self.spool} to {self.url} ({type(e).__name__}); "
            f"the local copy is complete, retrying every {self.interval_s:g}s"
        )


def uploader_for(spool: Path, url: str | None, interval_s: float, rank: int) -> Any:
    """An ``Uploader`` of one rank's files when ``url`` is given, else None."""
    return None if not url else Uploader(spool, url, interval_s, rank)
