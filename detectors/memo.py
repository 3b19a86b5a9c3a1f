"""Findings kept by a content key, so an unchanged run is not analysed again.

A run's key is a hash of what its findings depend on: the manifest entries of
its sources (offsets, generations, sizes: any new byte changes them), its
status (which the clock can change: a run stops being ``running``), the
per-run detectors that judge it with their options, the sibling groups of the
configuration, the tunescope version and the detectors' own files. An
across-run detector (TS501, TS502) is keyed by every run's state, so it runs
again when any run of the store changed.

The detectors' findings are kept as they came out of the detectors, before
the engine pass (links and supersession), which runs over cached and fresh
findings alike: the result is the same with and without the memo. The memo
is one Parquet file in the cache folder (``findings-memo.parquet``), written
whole and renamed into place; a missing, damaged or foreign file only means
the runs are analysed again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tunescope.findings import Finding

if TYPE_CHECKING:
    from tunescope.config import Config
    from tunescope.detectors.base import DetectorModule
    from tunescope.ingest.store.database import Store

MEMO_FILE = "findings-memo.parquet"
LIMITS = "\1"  # the scope of a run's limits: this, then the run id
SCHEMA = pa.schema([("key", pa.string()), ("scope", pa.string()), ("finding", pa.string())])
"""One row per finding (``finding``: its JSON), plus one row with a NULL
finding per key (a run with no finding is known too). ``scope``: the run id,
``"\\0"`` and a detector id for an across-run detector's findings, or
``"\\1"`` and a run id for what the run's logs cannot show (its limits: one
row, a JSON list)."""


def code_stamp() -> str:
    """The tunescope version and the names, sizes and times of the detectors'
    files: an edited detector never reuses findings of its older self."""
    from tunescope.version import __version__

    here = Path(__file__).resolve().parent
    parts = [__version__]
    for p in sorted(here.glob("*.py")):
        try:
            st = p.stat()
        except OSError:
            continue
        parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _plain(value: Any) -> Any:
    """numpy scalars and arrays for json.dumps (NaN and Inf stay floats, so a
    finding read back is the finding written)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def dump(by: str, f: Finding) -> str:
    """A finding and the detector that made it (``by``) as one JSON text."""
    return json.dumps({**f.to_dict(), "evidence": f.evidence, "by": by}, default=_plain)


def load(text: str) -> tuple[str, Finding]:
    d = json.loads(text)
    if not isinstance(d, dict) or not isinstance(d.get("by"), str):
        raise ValueError("not a kept finding")
    return d["by"], Finding.from_dict(d)


class Memo:
    """The kept findings of one store and configuration, read once; new
    findings are added with :meth:`put` and written by :meth:`save`."""

    def __init__(self, store: Store, config: Config) -> None:
        self.path = Path(store.cache.dir) / MEMO_FILE
        self.base = _digest(code_stamp(), config.groups)
        self.states = run_states(store)
        self.saved = _read(self.path)
        # scope -> (key, findings by detector, or a run's limits)
        self.new: dict[str, tuple[str, dict[str, list[Finding]] | list[str]]] = {}
        self.across: list[str] = []  # the across-run keys asked for
        self.result: str | None = None
        """What the full view of the last analysis was made from (set by the engine)."""

    def run_key(
        self, run: str, detectors: Iterable[DetectorModule], options: dict[str, Any]
    ) -> str:
        chosen = [(d.ID, repr(options[d.ID])) for d in detectors]
        return _digest(self.base, run, self.states.get(run), chosen)

    def across_key(self, det: DetectorModule, opts: Any) -> str:
        key = _digest(self.base, det.ID, repr(opts), sorted(self.states.items()))
        self.across.append(key)
        return key

    def limits(self, store: Store, runs: Sequence[str]) -> dict[str, list[str]]:
        """What each run's logs cannot show (:func:`~tunescope.detectors.limits.run_limits`),
        kept by the run's state like its findings: only changed runs are read."""
        from tunescope.detectors.base import Context
        from tunescope.detectors.limits import run_limits

        out: dict[str, list[str]] = {}
        keys = {r: _digest(self.base, "limits", r, self.states.get(r)) for r in runs}
        for run, key in keys.items():
            kept = self.saved.get(key)
            if kept is not None and len(kept) == 1:
                lines = _json_list(kept[0])
                if lines is not None:
                    out[run] = lines
        missing = [r for r in runs if r not in out]
        if missing:
            found = run_limits(Context(store, missing))
            for run in missing:
                out[run] = found.get(run, [])
                self.new[LIMITS + run] = (keys[run], out[run])
            self.save()
        return out

    def result_of(self, keys: dict[str, str], detectors: list[str]) -> str:
        """A key for a full view: every run's key, the across-run keys, the
        detectors whose findings it holds."""
        return _digest(sorted(keys.items()), self.across, detectors)

    def get(self, key: str) -> dict[str, list[Finding]] | None:
        """The kept findings of ``key`` by the detector that made them (None:
        not kept, or not readable)."""
        texts = self.saved.get(key)
        if texts is None:
            return None
        out: dict[str, list[Finding]] = {}
        try:
            for t in texts:
                by, f = load(t)
                out.setdefault(by, []).append(f)
        except (ValueError, KeyError, TypeError):
            return None
        return out

    def hits(self, keys: dict[str, str]) -> dict[str, dict[str, list[Finding]]]:
        """The runs of ``keys`` (run id -> key) whose findings are kept."""
        out = {}
        for run, key in keys.items():
            found = self.get(key)
            if found is not None:
                out[run] = found
        return out

    def put(self, key: str, scope: str, findings: dict[str, list[Finding]]) -> None:
        self.new[scope] = (key, findings)

    def put_runs(
        self, runs: Iterable[str], keys: dict[str, str], raw: dict[str, list[Finding]]
    ) -> None:
        """Keep the findings of the per-run detectors (``raw``: by detector)
        about each of ``runs``."""
        mine: dict[str, dict[str, list[Finding]]] = {r: {} for r in runs}
        for by, found in raw.items():
            for f in found:
                if f.run in mine:
                    mine[f.run].setdefault(by, []).append(f)
        for run, by_detector in mine.items():
            self.put(keys[run], run, by_detector)

    def save(self) -> None:
        """Write the memo: the new keys, and the saved keys of every other
        scope that still exists. Best effort: a read-only or full cache only
        means the next analysis does the work again."""
        if not self.new:
            return
        keys, scopes, texts = [], [], []
        for scope, (key, kept) in self.new.items():
            if isinstance(kept, list):  # a run's limits: one row, their lines
                rows: list[str | None] = [json.dumps(kept)]
            else:
                rows = [None, *(dump(by, f) for by, fs in kept.items() for f in fs)]
            for t in rows:
                keys.append(key)
                scopes.append(scope)
                texts.append(t)
        old = _read_rows(self.path)
        for key, scope, text in zip(*old, strict=True):
            run = scope[1:] if scope.startswith(LIMITS) else scope
            if scope in self.new or not (scope.startswith("\0") or run in self.states):
                continue
            keys.append(key)
            scopes.append(scope)
            texts.append(text)
        table = pa.table([keys, scopes, texts], schema=SCHEMA)
        _write(self.path, table)


def _json_list(text: str | None) -> list[str] | None:
    try:
        lines = json.loads(text or "")
    except ValueError:
        return None
    ok = isinstance(lines, list) and all(isinstance(x, str) for x in lines)
    return lines if ok else None


def run_states(store: Store) -> dict[str, str]:
    """Per run, what its data and status are now: its sources' manifest
    entries and the ``runs`` view's status."""
    manifest = store.manifest or store.cache.load_manifest()  # the views' own
    entries: dict[str, list[Any]] = {}
    for entry in manifest["sources"].values():
        run = entry.get("run_id")
        if isinstance(run, str):
            entries.setdefault(run, []).append(entry)
    rows = store.cursor().execute("SELECT run_id, status FROM runs").fetchall()
    return {
        run: _digest(status, sorted(entries.get(run, []), key=lambda e: e.get("src", 0)))
        for run, status in rows
    }


def _read_rows(path: Path) -> tuple[list[Any], list[Any], list[Any]]:
    import pyarrow.parquet as pq

    from tunescope.ingest.store.trust import plain_file

    if not plain_file(path):
        return [], [], []
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return [], [], []
    if not table.schema.equals(SCHEMA):
        return [], [], []
    cols = table.to_pydict()
    return cols["key"], cols["scope"], cols["finding"]


def _read(path: Path) -> dict[str, list[str]]:
    saved: dict[str, list[str]] = {}
    for key, scope, text in zip(*_read_rows(path), strict=True):
        if not isinstance(key, str) or not isinstance(scope, str):
            continue
        found = saved.setdefault(key, [])
        if text is not None:
            found.append(text)
    return saved


def _write(path: Path, table: pa.Table) -> None:
    import pyarrow.parquet as pq

    from tunescope.files import replacing

    try:
        with replacing(path) as tmp:
            pq.write_table(table, tmp)
    except (OSError, pa.ArrowException):
        pass  # best effort: the next analysis does the work again
