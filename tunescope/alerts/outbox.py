"""The outbox: a journal of alerts not delivered yet (JSONL in the cache dir)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tunescope.alerts.model import Alert
from tunescope.files import write_whole

OUTBOX_NAME = "alerts-outbox.jsonl"
"""The outbox's file name, in the cache dir of the runs (``watch``) or of the run (the trainer)."""

Item = Alert | dict[str, Any]
"""What is sent: an alert, or a ready payload sent as is."""


def item_to_dict(item: Item) -> dict[str, Any]:
    return {"alert": item.to_dict()} if isinstance(item, Alert) else {"payload": item}


def item_from_dict(d: dict[str, Any]) -> Item:
    return Alert.from_dict(d["alert"]) if "alert" in d else dict(d["payload"])


class Outbox:
    """Alerts not delivered yet, one JSON object per line: ``oid`` (the entry's
    id), ``endpoint`` (an id derived from the URL, never the URL itself),
    ``queued_at``, ``failed_at`` and ``error`` (after a failed attempt) and
    ``item`` (the alert). Safe across threads and processes (a file lock);
    appends are fsynced, rewrites go through a temporary file and a rename.

    It serves as a journal: ``AlertSender.send(item, durable=True)`` records
    the alert before queueing it and removes it once delivered (or refused), so
    a watcher killed mid-delivery sends it on its next start. Alerts that fail
    for a reason worth retrying (5xx, connection errors, a stop) stay in it
    until a later ``retry_outbox()``; entries older than ``max_age_s`` are dropped.
    """

    def __init__(self, path: str | os.PathLike[str], max_age_s: float = 7 * 86400) -> None:
        self.path = Path(path)
        self.max_age_s = max_age_s
        self._lock = threading.Lock()

    def _file_lock(self) -> Any:
        from filelock import FileLock

        from tunescope.ingest.store.trust import own_file

        lock = Path(str(self.path) + ".lock")
        own_file(lock)  # a link there would truncate what it points to
        own_file(self.path)  # ...or take the appends
        return FileLock(str(lock))

    def add(self, items: Iterable[tuple[str, Item]], error: str | None = None) -> list[str]:
        """Record ``(endpoint_id, item)`` pairs; returns their entry ids."""
        now = time.time()
        entries: list[dict[str, Any]] = []
        for endpoint_id, item in items:
            entry = {
                "oid": uuid.uuid4().hex[:16],
                "endpoint": endpoint_id,
                "queued_at": now,
                "failed_at": now if error else None,
                "error": error,
                "item": item_to_dict(item),
            }
            entries.append(entry)
        if not entries:
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(e, ensure_ascii=False) + "\n" for e in entries]
        with self._lock, self._file_lock(), open(self.path, "a", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        return [e["oid"] for e in entries]

    def _read(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn last line from a killed process
            if isinstance(entry, dict) and {"oid", "endpoint", "item"} <= entry.keys():
                out.append(entry)
        return out

    def _write(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            self.path.unlink(missing_ok=True)
            return
        lines = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
        write_whole(self.path, lines, durable=True)

    def _update(self, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
        with self._lock, self._file_lock():
            entries = self._read()
            new = change(entries)
            if new is not entries:
                self._write(new)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock, self._file_lock():
            return self._read()

    def remove(self, oids: Iterable[str]) -> None:
        gone = set(oids)
        if gone and self.path.exists():
            self._update(lambda es: [e for e in es if e["oid"] not in gone])

    def mark_failed(self, oid: str, error: str) -> None:
        def change(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
            for e in entries:
                if e["oid"] == oid:
                    e["failed_at"], e["error"] = time.time(), error
            return list(entries)

        self._update(change)

    def pending(self, endpoint_ids: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
        """The entries for these endpoints, oldest first, after dropping the
        entries (of any endpoint) older than ``max_age_s``. Returns (entries, dropped)."""
        ids = set(endpoint_ids)
        if not self.path.exists():
            return [], 0
        now = time.time()
        box: dict[str, Any] = {}

        def change(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
            fresh = [e for e in entries if now - float(e.get("queued_at") or now) <= self.max_age_s]
            box["dropped"] = len(entries) - len(fresh)
            box["mine"] = [e for e in fresh if e["endpoint"] in ids]
            return fresh if box["dropped"] else entries

        self._update(change)
        return box["mine"], box["dropped"]
