"""The cache of ingested rows: immutable Parquet segments plus a manifest.

Layout of a cache directory (``RUNS/.tunescope/`` when writable, else the user
cache dir, or ``--cache-dir``)::

    manifest.json            sources (offsets, generations, problems) and segments
    ingest.lock              serialises concurrent ingesters; readers take no lock
    segments/seg-N-steps.parquet, seg-N-metrics.parquet, seg-N-events.parquet
    findings-N.parquet       the latest findings of ``tunescope analyze``

Every file is written to a temporary name and renamed into place, so a segment
exists whole or not at all, and a reader that loaded the manifest sees a
consistent set. A source whose file shrank or was replaced gets a new
generation; rows of older generations stop counting at once and their
segments are deleted later, once no reader can still be opening them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tunescope.errors import InputError, StoreError
from tunescope.ingest.discover import READERS, Source, discover, run_id_for
from tunescope.ingest.rows import Problem, Reader, ReadResult
from tunescope.ingest.store import manifest as manifests
from tunescope.ingest.store import planning, segments
from tunescope.ingest.store.manifest import MAX_PROBLEMS_PER_SOURCE, TABLES
from tunescope.ingest.store.trust import own_file, own_folder
from tunescope.say import say

MAX_SEGMENTS = 24  # past this many ingest passes, merge the segments into one


def default_cache_dir(root: Path) -> Path:
    """``ROOT/.tunescope`` when the root is writable and no folder above it
    holds a cache already (analysing ``runs/`` and then ``runs/x`` must not
    scatter caches inside one another), else a per-root folder in the user
    cache dir. A ``.tunescope`` that is a link is not used: a copied runs
    folder must not make the cache write or delete where the link points."""
    local = root / ".tunescope"
    if local.is_symlink():
        say(f"{local} is a link; not using it as the cache (pass --cache-dir to choose one)")
    elif local.is_dir() and os.access(local, os.W_OK):
        return local
    nested = any((p / ".tunescope" / "manifest.json").is_file() for p in root.resolve().parents)
    if not local.is_symlink() and not local.exists() and os.access(root, os.W_OK) and not nested:
        return local
    import platformdirs

    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return Path(platformdirs.user_cache_dir("tunescope")) / f"{root.resolve().name}-{digest}"


@dataclass
class IngestReport:
    """What one ingest pass did."""

    root: Path
    runs: int = 0
    sources: int = 0
    changed: int = 0
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    problems: list[Problem] = field(default_factory=list)
    new_problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0
    modified: bool = False  # the cached rows changed (new, replaced or removed rows)
    skipped: int = 0
    """Lines and files skipped in all: ``problems`` lists at most
    MAX_PROBLEMS_PER_SOURCE of each source, this counts every one."""
    unclaimed: list[tuple[Path, str | None]] = field(default_factory=list)  # no reader took them


@dataclass
class _Pass:
    """What one ingest pass works on, once the sources are listed."""

    sources: list[Source]
    dir_problems: list[Problem]
    stats: dict[str, planning.Stat | None]
    changed: list[Source]
    gone: list[str]
    first: int  # this pass's files are numbered from here


class Cache:
    """One runs root's cache directory."""

    def __init__(self, root: Path, cache_dir: Path | None = None) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise InputError(
                f"{self.root}: no such directory; pass the folder that holds your runs"
            )
        if not self.root.is_dir():
            raise InputError(f"{self.root}: not a directory; pass the folder that holds your runs")
        self.dir = Path(cache_dir) if cache_dir else default_cache_dir(self.root)
        self.segments_dir = self.dir / "segments"
        self.manifest_path = self.dir / "manifest.json"
        for folder in (self.segments_dir, self.dir / "tmp"):
            own_folder(folder)  # a link there would read, spill or delete elsewhere

    # ---- manifest, lock and writes ---------------------------------------------

    def load_manifest(self) -> dict[str, Any]:
        return manifests.load(self.manifest_path, self.root, self.dir)

    def _save_manifest(self, manifest: dict[str, Any]) -> None:
        manifests.save(self.manifest_path, manifest)

    @contextlib.contextmanager
    def lock(self, timeout: float = 600.0) -> Iterator[None]:
        from filelock import FileLock, Timeout

        self._ensure_dirs()
        lock = FileLock(str(self.dir / "ingest.lock"))
        try:
            with self._writing():
                lock.acquire(timeout=timeout)
        except Timeout:
            raise StoreError(
                f"another tunescope process has held {self.dir / 'ingest.lock'} for "
                f"{timeout:.0f}s; wait for it, or remove the lock file if it crashed"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _ensure_dirs(self) -> None:
        own_folder(self.segments_dir)
        own_file(self.dir / "ingest.lock")  # opening a link would truncate what it points to
        try:
            self.segments_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create the cache directory {self.dir}: {e.strerror or e}; "
                "pass --cache-dir to put it elsewhere"
            ) from None
        if self.segments_dir.is_symlink() or not self.segments_dir.is_dir():
            raise StoreError(
                f"{self.segments_dir} is not a folder of the cache's own and cannot be "
                "replaced; remove it, or pass --cache-dir to put the cache elsewhere"
            )

    def write_parquet(self, table: pa.Table, name: str) -> str:
        return segments.write_parquet(self.segments_dir, table, name)

    @contextlib.contextmanager
    def _writing(self, uncommitted: int | None = None) -> Iterator[None]:
        """Turn a failed write into the cache (a full disk, a quota, a read-only
        mount) into one clear error. The manifest keeps its last good state;
        temporary files are removed by their writers, and whole files of this
        pass (numbered ``uncommitted`` and up) here, since nothing refers to them."""
        try:
            yield
        except OSError as e:
            if uncommitted is not None:
                segments.remove_uncommitted(self.segments_dir, uncommitted)
            # pyarrow's errors carry the errno in their text only
            code = e.errno or next(map(int, re.findall(r"\[errno (\d+)\]", str(e))), None)
            reason = e.strerror or (os.strerror(code) if code else str(e))
            raise StoreError(
                f"cannot write the cache in {self.dir}: {reason}; free some space "
                "or pass --cache-dir to put the cache elsewhere (nothing was lost: the next "
                "run reads the new lines again)"
            ) from None

    # ---- ingest ----------------------------------------------------------------

    def ingest(
        self,
        readers: list[Reader] | None = None,
        progress: Callable[..., None] | None = None,
    ) -> IngestReport:
        """Read what is new under the root and record it as segments."""
        started = time.perf_counter()
        report = IngestReport(self.root)
        readers = readers or READERS
        if not self.dir.exists():
            # no cache yet: a folder with nothing to read gets none
            found, problems = discover(self.root, readers, unclaimed=report.unclaimed)
            if not found:
                report.problems = report.new_problems = problems
                report.skipped = len(problems)
                report.seconds = time.perf_counter() - started
                return report
            report.unclaimed.clear()
        with self.lock():
            manifest = self.load_manifest()
            bad = segments.unreadable(manifest, self.segments_dir)
            if bad is not None:  # deleted or cut short behind the cache's back
                say(
                    f"{self.segments_dir / bad} is missing, cut short or not a segment; "
                    "rebuilding the cache from the logs"
                )
                manifest = manifests.new(self.root)
            segments.clean_orphans(self.dir, self.segments_dir, manifest["next_seg"])
            plan = self._plan(manifest, readers, report)
            new_segments = self._read_and_write(manifest, plan, report, progress)
            self._commit(manifest, plan, new_segments)
            report.runs = len({e.get("run_id") for e in manifest["sources"].values()})
        report.problems = plan.dir_problems + [
            Problem(p["path"], p["line"], p["reason"])
            for e in manifest["sources"].values()
            for p in e["problems"]
        ]
        report.skipped = len(plan.dir_problems) + sum(
            max(e.get("problem_count", 0), len(e["problems"])) for e in manifest["sources"].values()
        )
        report.seconds = time.perf_counter() - started
        return report

    def _plan(self, manifest: dict[str, Any], readers: list[Reader], report: IngestReport) -> _Pass:
        """List the sources, forget those gone, and find those that changed."""
        first = manifest["next_seg"]
        sources, dir_problems = discover(self.root, readers, unclaimed=report.unclaimed)
        report.sources = len(sources)
        report.runs = len({s.run_id for s in sources})
        known: dict[str, Any] = manifest["sources"]
        live_keys = {s.key for s in sources}
        gone = [k for k in known if k not in live_keys and known[k].get("parent") not in live_keys]
        for key in gone:
            del known[key]  # the file is gone: its rows go with it
            report.modified = True
        # Stat before reading: bytes appended while we read make the next
        # pass see a changed file (a stat after the read would hide them).
        stats = {s.key: planning.stat(s.path) for s in sources}
        changed = [s for s in sources if planning.changed(stats[s.key], known.get(s.key))]
        report.changed = len(changed)
        return _Pass(sources, dir_problems, stats, changed, gone, first)

    def _read_and_write(
        self,
        manifest: dict[str, Any],
        plan: _Pass,
        report: IngestReport,
        progress: Callable[..., None] | None,
    ) -> list[dict[str, Any]]:
        """Read the changed sources and write their rows as this pass's
        segments (one per table); returns their manifest records."""
        seg = manifest["next_seg"]
        manifest["next_seg"] = seg + 1
        known: dict[str, Any] = manifest["sources"]
        writers = {
            t: segments.SegmentWriter(self.segments_dir, f"seg-{seg:08d}-{t}.parquet")
            for t in TABLES
        }
        srcs: dict[str, set[tuple[int, int]]] = {t: set() for t in TABLES}
        try:
            sizes = planning.unread_bytes(plan.stats, known)
            for results in planning.read_batches(plan.changed, sizes, known, progress):
                parts: dict[str, list[pa.Table]] = {t: [] for t in TABLES}
                tags: dict[str, list[tuple[str, int, int, int]]] = {t: [] for t in TABLES}
                for source, result in self._with_subruns(known, results):
                    st = plan.stats.get(source.key) or plan.stats[source.key.rpartition("#")[0]]
                    entry = self._record(manifest, source, result, st, report)
                    for t, table in zip(
                        TABLES, (result.steps, result.metrics, result.events), strict=True
                    ):
                        if table.num_rows:
                            parts[t].append(table)
                            tags[t].append(
                                (source.run_id, entry["src"], entry["gen"], table.num_rows)
                            )
                            srcs[t].add((entry["src"], entry["gen"]))
                            report.rows[t] += table.num_rows
                for t in TABLES:  # written while the next batch is read
                    if parts[t]:
                        writers[t].add(segments.tagged(parts[t], tags[t], seg))
            new_segments = []
            for t in TABLES:
                with self._writing(uncommitted=plan.first):
                    whole = writers[t].close()
                if whole:
                    new_segments.append(
                        {
                            "file": writers[t].name,
                            "table": t,
                            "rows": writers[t].rows,
                            "srcs": [list(p) for p in sorted(srcs[t])],
                        }
                    )
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        return new_segments

    def _commit(
        self, manifest: dict[str, Any], plan: _Pass, new_segments: list[dict[str, Any]]
    ) -> None:
        """Record the new segments, retire, merge and delete old ones, and save
        the manifest when anything changed."""
        manifest["segments"].extend(new_segments)
        count = len(manifest["segments"])
        segments.retire(manifest, self.segments_dir)
        # Nothing read, nothing gone, nothing retired: the manifest on disk
        # is still true and is not rewritten (a full disk does not stop a
        # query over what is already cached).
        dirty = bool(plan.changed or plan.gone or new_segments)
        dirty = dirty or len(manifest["segments"]) != count
        trash = len(manifest["trash"])
        with self._writing(uncommitted=plan.first):
            if len(manifest["segments"]) > MAX_SEGMENTS:
                segments.merge(manifest, self.segments_dir)
                dirty = True
            segments.empty_trash(manifest, self.segments_dir)
            if dirty:
                manifest["updated"] = time.time()
                self._save_manifest(manifest)
        if not dirty and len(manifest["trash"]) != trash:
            # only deleted trash to record: worth a try, not an error
            with contextlib.suppress(OSError):
                self._save_manifest(manifest)

    def _with_subruns(
        self, known: dict[str, Any], results: list[tuple[Source, ReadResult]]
    ) -> Iterator[tuple[Source, ReadResult]]:
        """Each result, then the further runs a reader found in the same file
        (``ReadResult.subruns``), each as a source of its own named after the
        file (``train.log#2``). A file re-read from the start drops the runs
        it no longer holds."""
        for source, result in results:
            yield source, result
            children = []
            for suffix, sub in result.subruns:
                run_dir = source.path.parent / f"{source.path.name}{suffix}"
                rel = f"{source.rel or source.path}{suffix}"
                rid = run_id_for(self.root, run_dir)
                child = Source(source.path, run_dir, rid, source.reader, rel=rel)
                children.append(child.key)
                yield child, sub
                known[child.key]["parent"] = source.key
            if result.replace:
                for key in [
                    k
                    for k, e in known.items()
                    if e.get("parent") == source.key and k not in children
                ]:
                    del known[key]

    def _record(
        self,
        manifest: dict[str, Any],
        source: Source,
        result: ReadResult,
        st: tuple[int, int, int] | None,
        report: IngestReport,
    ) -> dict[str, Any]:
        """Update the manifest entry of a source that was read; returns it."""
        known = manifest["sources"]
        entry = known.get(source.key)
        # a file seen before that changed since: the run is being written now
        # (the first sight of a file says nothing: a clone or a copy is new too)
        changed_at = time.time() if entry is not None else None
        if entry is None or result.replace:
            entry = manifests.new_entry(manifest, source, entry)
            known[source.key] = entry
            report.modified = True
        entry.update(
            size=st[0] if st else None,
            mtime_ns=st[1] if st else None,
            inode=st[2] if st else None,
            state=result.state,
            format=source.reader.format,
            run_id=source.run_id,
            run_dir=str(source.run_dir),
        )
        if changed_at is not None:
            entry["changed_at"] = changed_at
        if result.problems:
            probs = entry["problems"] + [p.to_dict() for p in result.problems]
            entry["problems"] = probs[:MAX_PROBLEMS_PER_SOURCE]
            entry["problem_count"] = entry.get("problem_count", 0) + len(result.problems)
            report.new_problems.extend(result.problems)
        manifests.note_overlap(entry, result)
        if result.replace or result.rows or result.problems:
            report.modified = True
        return entry

    # ---- findings --------------------------------------------------------------

    def save_findings(self, table: pa.Table, run_ids: list[str], key: str | None = None) -> None:
        """Replace the stored findings of ``run_ids`` with ``table``; ``key``
        names what the whole stored table was made from (None: unknown)."""
        with self.lock():
            manifest = self.load_manifest()
            old = manifest.get("findings")
            if old:
                try:
                    prev = pq.read_table(self.segments_dir / old)
                except (OSError, pa.ArrowException):
                    prev = None
                if prev is not None and prev.num_rows:
                    import pyarrow.compute as pc

                    mask = pc.invert(pc.is_in(prev.column("run_id"), pa.array(run_ids)))
                    table = pa.concat_tables([prev.filter(mask).cast(table.schema), table])
                manifest["trash"].append({"file": old, "since": time.time()})
            seg = manifest["next_seg"]
            manifest["next_seg"] = seg + 1
            with self._writing(uncommitted=seg):
                manifest["findings"] = self.write_parquet(table, f"findings-{seg:08d}.parquet")
                manifest["findings_key"] = key
                self._save_manifest(manifest)
