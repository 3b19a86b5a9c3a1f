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
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tunescope.errors import InputError, StoreError
from tunescope.ingest.discover import READERS, Source, discover, run_id_for
from tunescope.ingest.rows import Problem, Reader, ReadResult, connect_duckdb, fetch_arrow

MANIFEST_VERSION = 2  # 2: no min/max statistics on float columns (a cache of 1 is rebuilt)
MAX_SEGMENTS = 24  # past this many ingest passes, merge the segments into one
TRASH_GRACE_S = 120.0  # superseded segment files are deleted after this long
MAX_PROBLEMS_PER_SOURCE = 200
BATCH = 2048  # sources handed to one read_batch call, at most...
BATCH_BYTES = 512 * 1024 * 1024  # ...and about this many bytes of them (memory stays bounded)
TABLES = ("steps", "metrics", "events")
# How segments are written. Min/max statistics only for the key columns: the
# store's views read the segments directly, and DuckDB prunes row groups by
# statistics that leave NaN out (`WHERE isnan(loss)` would find nothing).
PARQUET = {
    "compression": "zstd",
    "compression_level": 1,
    "write_statistics": ["run_id", "rank", "step", "src", "gen", "seg", "seq", "name", "kind"],
}


def default_cache_dir(root: Path) -> Path:
    """``ROOT/.tunescope`` when the root is writable and no folder above it
    holds a cache already (analysing ``runs/`` and then ``runs/x`` must not
    scatter caches inside one another), else a per-root folder in the user
    cache dir."""
    local = root / ".tunescope"
    if local.is_dir() and os.access(local, os.W_OK):
        return local
    nested = any((p / ".tunescope" / "manifest.json").is_file() for p in root.resolve().parents)
    if not local.exists() and os.access(root, os.W_OK) and not nested:
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

    # ---- manifest ------------------------------------------------------------

    def load_manifest(self) -> dict[str, Any]:
        try:
            with open(self.manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
        except FileNotFoundError:
            return _new_manifest(self.root)
        except (OSError, ValueError):
            # A damaged manifest only costs a re-read: the logs are the truth.
            print(f"tunescope: {self.manifest_path} is unreadable; re-ingesting", file=sys.stderr)
            return _new_manifest(self.root)
        if not _manifest_shaped(manifest):
            version = manifest.get("version") if isinstance(manifest, dict) else None
            if not isinstance(version, int) or version == MANIFEST_VERSION:  # not an old one
                print(
                    f"tunescope: {self.manifest_path} is not a tunescope manifest; re-ingesting",
                    file=sys.stderr,
                )
            return _new_manifest(self.root)
        root = str(self.root.resolve())
        if manifest.get("root") != root:
            if self.dir.resolve().parent != Path(root):
                # A cache dir shared with another runs root: start over rather
                # than mix two roots' rows.
                print(
                    f"tunescope: {self.dir} held the cache of {manifest.get('root')}; "
                    f"re-ingesting {root}",
                    file=sys.stderr,
                )
                return _new_manifest(self.root)
            manifest["root"] = root  # the runs folder moved with its cache inside it
        return manifest

    def _save_manifest(self, manifest: dict[str, Any]) -> None:
        tmp = self.manifest_path.with_name(f"manifest.{os.getpid()}.tmp")
        try:
            # one dumps (C encoder) and one write: json.dump streams through
            # Python-level chunks, several times slower for thousands of sources
            text = json.dumps(manifest, separators=(",", ":"))
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.manifest_path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

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
        try:
            self.segments_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create the cache directory {self.dir}: {e.strerror or e}; "
                "pass --cache-dir to put it elsewhere"
            ) from None

    def write_parquet(self, table: pa.Table, name: str) -> str:
        path = self.segments_dir / name
        tmp = _tmp_name(path)
        try:
            pq.write_table(table, tmp, **PARQUET)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return name

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
                self._remove_uncommitted(uncommitted)
            # pyarrow's errors carry the errno in their text only
            code = e.errno or next(map(int, re.findall(r"\[errno (\d+)\]", str(e))), None)
            reason = e.strerror or (os.strerror(code) if code else str(e))
            raise StoreError(
                f"cannot write the cache in {self.dir}: {reason}; free some space "
                "or pass --cache-dir to put the cache elsewhere (nothing was lost: the next "
                "run reads the new lines again)"
            ) from None

    def _clean_orphans(self, manifest: dict[str, Any]) -> None:
        """Remove what killed or failed passes left behind: temporary files
        (``.seg-*.parquet.PID.tmp``, ``manifest.PID.tmp``) of processes that
        no longer run, and whole segment files no saved manifest refers to."""
        for folder, pattern in ((self.segments_dir, ".*.tmp"), (self.dir, "manifest.*.tmp")):
            with contextlib.suppress(OSError):
                for path in folder.glob(pattern):
                    pid = path.name.rsplit(".", 2)[-2]
                    if pid.isdigit() and not _pid_alive(int(pid)):
                        with contextlib.suppress(OSError):
                            path.unlink()
        self._remove_uncommitted(manifest["next_seg"])

    def _remove_uncommitted(self, first: int) -> None:
        """Remove segment and findings files numbered ``first`` and up: a pass
        wrote them and stopped before its manifest was saved, so no reader can
        know them (every saved manifest numbers its files below its
        ``next_seg``). Called under the lock only."""
        with contextlib.suppress(OSError):
            for path in self.segments_dir.glob("*.parquet"):
                m = _NUMBERED.fullmatch(path.name)
                if m and int(m.group(1)) >= first:
                    with contextlib.suppress(OSError):
                        path.unlink()

    # ---- ingest ----------------------------------------------------------------

    def ingest(
        self,
        readers: list[Reader] | None = None,
        progress: Callable[..., None] | None = None,
    ) -> IngestReport:
        """Read what is new under the root and record it as segments."""
        started = time.perf_counter()
        report = IngestReport(self.root)
        if not self.dir.exists():
            # no cache yet: a folder with nothing to read gets none
            found, problems = discover(self.root, readers or READERS, unclaimed=report.unclaimed)
            if not found:
                report.problems = report.new_problems = problems
                report.skipped = len(problems)
                report.seconds = time.perf_counter() - started
                return report
            report.unclaimed.clear()
        with self.lock():
            manifest = self.load_manifest()
            self._clean_orphans(manifest)
            first = manifest["next_seg"]  # this pass's files are numbered from here
            sources, dir_problems = discover(
                self.root, readers or READERS, unclaimed=report.unclaimed
            )
            report.sources = len(sources)
            report.runs = len({s.run_id for s in sources})
            known: dict[str, Any] = manifest["sources"]
            live_keys = {s.key for s in sources}
            gone = [
                k for k in known if k not in live_keys and known[k].get("parent") not in live_keys
            ]
            for key in gone:
                del known[key]  # the file is gone: its rows go with it
                report.modified = True

            # Stat before reading: bytes appended while we read make the next
            # pass see a changed file (a stat after the read would hide them).
            stats = {s.key: _stat(s.path) for s in sources}
            changed = [s for s in sources if _changed(stats[s.key], known.get(s.key))]
            report.changed = len(changed)
            seg = manifest["next_seg"]
            manifest["next_seg"] = seg + 1
            writers = {
                t: _SegmentWriter(self.segments_dir, f"seg-{seg:08d}-{t}.parquet") for t in TABLES
            }
            srcs: dict[str, set[tuple[int, int]]] = {t: set() for t in TABLES}
            try:
                sizes = {  # the bytes still to read in each source
                    k: max((st[0] if st else 0) - _offset(known.get(k)), 0)
                    for k, st in stats.items()
                }
                for results in self._read_batches(changed, sizes, known, report, progress):
                    parts: dict[str, list[pa.Table]] = {t: [] for t in TABLES}
                    tags: dict[str, list[tuple[str, int, int, int]]] = {t: [] for t in TABLES}
                    for source, result in self._with_subruns(known, results):
                        st = stats.get(source.key) or stats[source.key.rpartition("#")[0]]
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
                            writers[t].add(_tagged(parts[t], tags[t], seg))
                new_segments = []
                for t in TABLES:
                    with self._writing(uncommitted=first):
                        whole = writers[t].close()
                    if whole:
                        pairs = [list(p) for p in sorted(srcs[t])]
                        new_segments.append(
                            {
                                "file": writers[t].name,
                                "table": t,
                                "rows": writers[t].rows,
                                "srcs": pairs,
                            }
                        )
            except BaseException:
                for w in writers.values():
                    w.abort()
                raise
            manifest["segments"].extend(new_segments)
            segments = len(manifest["segments"])
            self._retire(manifest)
            # Nothing read, nothing gone, nothing retired: the manifest on disk
            # is still true and is not rewritten (a full disk does not stop a
            # query over what is already cached).
            dirty = bool(changed or gone or new_segments) or len(manifest["segments"]) != segments
            trash = len(manifest["trash"])
            report.runs = len({e.get("run_id") for e in known.values()})
            with self._writing(uncommitted=first):
                if len(manifest["segments"]) > MAX_SEGMENTS:
                    self._merge(manifest)
                    dirty = True
                self._empty_trash(manifest)
                if dirty:
                    manifest["updated"] = time.time()
                    self._save_manifest(manifest)
            if not dirty and len(manifest["trash"]) != trash:
                # only deleted trash to record: worth a try, not an error
                with contextlib.suppress(OSError):
                    self._save_manifest(manifest)
        report.problems = dir_problems + [
            Problem(p["path"], p["line"], p["reason"])
            for e in manifest["sources"].values()
            for p in e["problems"]
        ]
        report.skipped = len(dir_problems) + sum(
            max(e.get("problem_count", 0), len(e["problems"])) for e in manifest["sources"].values()
        )
        report.seconds = time.perf_counter() - started
        return report

    def _read_batches(
        self,
        changed: list[Source],
        sizes: dict[str, int],
        known: dict[str, Any],
        report: IngestReport,
        progress: Callable[..., None] | None,
    ) -> Iterator[list[tuple[Source, ReadResult]]]:
        """The changed sources read, a batch at a time."""
        by_reader: dict[int, list[Source]] = {}
        for s in changed:
            by_reader.setdefault(id(s.reader), []).append(s)
        done = read_bytes = rows_done = 0
        total_bytes = sum(sizes.get(s.key, 0) for s in changed)
        for group in by_reader.values():
            reader = group[0].reader
            for batch in _batches(group, sizes):
                out: list[tuple[Source, ReadResult]] = []
                for s in [s for s in batch if s.part is not None]:  # runs inside one file
                    state = (known.get(s.key) or {}).get("state")
                    out.append((s, _read_part(reader, s.path, s.part, state)))
                batch = [s for s in batch if s.part is None]
                items = [(s.path, (known.get(s.key) or {}).get("state")) for s in batch]
                if items:
                    for s, result in zip(batch, _read_batch(reader, items), strict=True):
                        out.append((s, result))
                done += len(out)
                read_bytes += sum(sizes.get(s.key, 0) for s, _ in out)
                if progress is not None:
                    rows = sum(r.rows for _, r in out)
                    rows_done += rows
                    progress(read_bytes, total_bytes, files=done, of=len(changed), rows=rows_done)
                yield out

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
            entry = _new_entry(manifest, source, entry)
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
        _note_overlap(entry, result)
        if result.replace or result.rows or result.problems:
            report.modified = True
        return entry

    def _retire(self, manifest: dict[str, Any]) -> None:
        """Move segments with no live rows to the trash."""
        live = {(e["src"], e["gen"]) for e in manifest["sources"].values()}
        keep = []
        for seg in manifest["segments"]:
            srcs = seg.get("srcs")
            if srcs is None:
                srcs = seg["srcs"] = _segment_srcs(self.segments_dir / seg["file"])
            if any(tuple(s) in live for s in srcs):
                keep.append(seg)
            else:
                manifest["trash"].append({"file": seg["file"], "since": time.time()})
        manifest["segments"] = keep

    def _merge(self, manifest: dict[str, Any]) -> None:
        """Rewrite the live rows of many small segments into one per table.

        Tiered: when one segment already holds most rows (a long history), only
        the small recent ones are merged, so a live run does not rewrite its
        whole cache every few passes."""
        live = pa.table(
            {
                "src": [e["src"] for e in manifest["sources"].values()],
                "gen": [e["gen"] for e in manifest["sources"].values()],
            },
            schema=pa.schema([("src", pa.int64()), ("gen", pa.int64())]),
        )
        seg = manifest["next_seg"]
        manifest["next_seg"] = seg + 1
        con = connect_duckdb()
        con.register("live", live)
        keep, merged, retired = [], [], []
        for t in TABLES:
            segs = [s for s in manifest["segments"] if s["table"] == t]
            if len(segs) < 2:
                keep.extend(segs)
                continue
            big = max(segs, key=lambda s: s["rows"])
            if big["rows"] >= 4 * (sum(s["rows"] for s in segs) - big["rows"]):
                keep.append(big)
                segs = [s for s in segs if s is not big]
            files = [str(self.segments_dir / s["file"]) for s in segs]
            table = fetch_arrow(
                con,
                "SELECT * FROM read_parquet(?) SEMI JOIN live USING (src, gen) ORDER BY seg, seq",
                [files],
            )
            name = self.write_parquet(table, f"seg-{seg:08d}-{t}.parquet")
            pairs = {
                (s, g)
                for s, g in zip(table["src"].to_pylist(), table["gen"].to_pylist(), strict=True)
            }
            merged.append(
                {
                    "file": name,
                    "table": t,
                    "rows": table.num_rows,
                    "srcs": [list(p) for p in sorted(pairs)],
                }
            )
            retired.extend(segs)
        con.close()
        now = time.time()
        manifest["trash"].extend({"file": s["file"], "since": now} for s in retired)
        manifest["segments"] = keep + merged

    def _empty_trash(self, manifest: dict[str, Any]) -> None:
        now = time.time()
        keep = []
        for item in manifest["trash"]:
            if now - item["since"] < TRASH_GRACE_S:
                keep.append(item)
                continue
            with contextlib.suppress(FileNotFoundError):
                (self.segments_dir / item["file"]).unlink()
        manifest["trash"] = keep

    # ---- findings --------------------------------------------------------------

    def save_findings(self, table: pa.Table, run_ids: list[str]) -> None:
        """Replace the stored findings of ``run_ids`` with ``table``."""
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
                self._save_manifest(manifest)


_NUMBERED = re.compile(r"(?:seg|findings)-(\d+)(?:-[a-z]+)?\.parquet")


def _tmp_name(path: Path) -> Path:
    """Where a segment is written before it is renamed into place."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


class _SegmentWriter:
    """One table's rows of an ingest pass as one Parquet segment, written a
    batch at a time on a background thread (writing overlaps the reading of
    the next batch) under a temporary name, renamed into place when whole."""

    def __init__(self, segments_dir: Path, name: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.name = name
        self.path = segments_dir / name
        self.tmp = _tmp_name(self.path)
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._pool = ThreadPoolExecutor(1)
        self._pending: list[Any] = []

    def add(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        self._pending.append(self._pool.submit(self._write, table))

    def _write(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.tmp, table.schema, **PARQUET)
        self._writer.write_table(table)

    def close(self) -> bool:
        """Finish the file; False when no rows were written (no segment)."""
        for future in self._pending:
            future.result()  # a write's error surfaces here
        self._pool.shutdown()
        if self._writer is None:
            return False
        self._writer.close()
        os.replace(self.tmp, self.path)
        return True

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive, but another user's (or unknowable): leave its files
    return True


def _manifest_shaped(manifest: Any) -> bool:
    """Whether parsed JSON has the shape of a manifest of this version (a
    valid JSON file of another shape is treated as no manifest at all)."""
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        return False
    if not all(isinstance(manifest.get(k), int) for k in ("next_seg", "next_src")):
        return False
    sources, segments, trash = (manifest.get(k) for k in ("sources", "segments", "trash"))
    if not isinstance(sources, dict) or not isinstance(segments, list):
        return False
    if not isinstance(trash, list) or not isinstance(manifest.get("findings"), str | None):
        return False
    for entry in sources.values():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("src"), int)
            and isinstance(entry.get("gen"), int)
            and isinstance(entry.get("problems"), list)
            and all(
                isinstance(p, dict) and {"path", "line", "reason"} <= p.keys()
                for p in entry["problems"]
            )
            and all(isinstance(entry.get(k), int | None) for k in ("size", "mtime_ns", "inode"))
            and isinstance(entry.get("max_step", {}), dict)
        ):
            return False
    for seg in segments:
        if not (
            isinstance(seg, dict)
            and isinstance(seg.get("file"), str)
            and seg.get("table") in TABLES
            and isinstance(seg.get("rows"), int)
        ):
            return False
    return all(
        isinstance(t, dict)
        and isinstance(t.get("file"), str)
        and isinstance(t.get("since"), float | int)
        for t in trash
    )


def _new_manifest(root: Path) -> dict[str, Any]:
    return {
        "version": MANIFEST_VERSION,
        "root": str(root.resolve()),
        "next_seg": 1,
        "next_src": 1,
        "sources": {},
        "segments": [],
        "trash": [],
        "findings": None,
    }


def _new_entry(manifest: dict[str, Any], source: Source, old: dict | None) -> dict[str, Any]:
    if old is not None:  # same source, re-read: a new generation supersedes the old rows
        fresh = {**old, "gen": old["gen"] + 1, "problems": [], "problem_count": 0}
        fresh.pop("max_step", None)
        fresh.pop("overlap", None)
        return fresh
    src = manifest["next_src"]
    manifest["next_src"] = src + 1
    return {"src": src, "gen": 1, "problems": [], "problem_count": 0}


def _note_overlap(entry: dict[str, Any], result: ReadResult) -> None:
    """Remember per rank the last step this source wrote, and whether it ever
    wrote a (rank, step) or (rank, step, metric) again: a resume re-logging
    steps, a summary row repeating a step, a re-read copy. Only runs with such
    overlaps pay for the store's newest-write-wins pass."""
    last: dict[str, int] = entry.setdefault("max_step", {})
    seen: dict[str, tuple[int, int]] = {}
    for table, keys in (
        (result.steps, ["rank", "step"]),
        (result.metrics, ["rank", "step", "name"]),
    ):
        if table.num_rows == 0:
            continue
        if table.column("step").null_count:
            entry["overlap"] = True
        span = _one_rank_unique(table, by_name=len(keys) == 3)
        if span is not None:  # the common case, without a hash group-by
            rank, lo, hi = span
            old = seen.get(rank, (lo, hi))
            seen[rank] = (min(old[0], lo), max(old[1], hi))
            continue
        keyed = table.select(keys).drop_null()
        if keyed.group_by(keys).aggregate([]).num_rows != keyed.num_rows:
            entry["overlap"] = True
        for row in keyed.group_by("rank").aggregate([("step", "min"), ("step", "max")]).to_pylist():
            rank = str(row["rank"])
            lo, hi = seen.get(rank, (row["step_min"], row["step_max"]))
            seen[rank] = (min(lo, row["step_min"]), max(hi, row["step_max"]))
    for rank, (lo, hi) in seen.items():
        if rank in last and lo <= last[rank]:
            entry["overlap"] = True
        last[rank] = max(last.get(rank, hi), hi)


def _offset(entry: dict[str, Any] | None) -> int:
    state = (entry or {}).get("state")
    offset = state.get("offset", 0) if isinstance(state, dict) else 0
    return offset if isinstance(offset, int) else 0


def _batches(sources: list[Source], sizes: dict[str, int]) -> Iterator[list[Source]]:
    """Consecutive runs of at most BATCH sources and about BATCH_BYTES bytes."""
    batch: list[Source] = []
    total = 0
    for s in sources:
        if batch and (len(batch) >= BATCH or total + sizes.get(s.key, 0) > BATCH_BYTES):
            yield batch
            batch, total = [], 0
        batch.append(s)
        total += sizes.get(s.key, 0)
    if batch:
        yield batch


def _one_rank_unique(table: pa.Table, by_name: bool) -> tuple[str, int, int] | None:
    """(rank, first step, last step) when every row has the same rank and no
    (step) or (step, name) key repeats; None otherwise (or when unsure)."""
    import numpy as np
    import pyarrow.compute as pc

    rank, step = table.column("rank"), table.column("step")
    if rank.null_count or step.null_count:
        return None
    bounds = pc.min_max(rank)
    if bounds["min"].as_py() != bounds["max"].as_py():
        return None
    steps = step.to_numpy()
    rising = steps[1:] > steps[:-1]
    if not by_name:
        unique = bool(rising.all())
    else:
        names = table.column("name")
        if names.null_count:
            return None
        encoded = pc.dictionary_encode(names).combine_chunks()
        codes = encoded.indices.to_numpy()
        change = codes[1:] != codes[:-1]
        if int(change.sum()) + 1 == len(encoded.dictionary) and bool((rising | change).all()):
            unique = True  # each name in one block of rising steps
        else:
            order = np.lexsort((steps, codes))
            c, s = codes[order], steps[order]
            unique = not bool(((c[1:] == c[:-1]) & (s[1:] == s[:-1])).any())
    if not unique:
        return None
    return str(bounds["min"].as_py()), int(steps.min()), int(steps.max())


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def _changed(st: tuple[int, int, int] | None, entry: dict[str, Any] | None) -> bool:
    if entry is None:
        return True
    if st is None:
        return False
    return (entry.get("size"), entry.get("mtime_ns"), entry.get("inode")) != st


def _read_batch(reader: Reader, items: list[tuple[Path, Any]]) -> list[ReadResult]:
    """Call the reader; a file that cannot be read becomes a problem, never a crash."""
    batch = getattr(reader, "read_batch", None)
    if batch is not None:
        try:
            return batch(items)
        except Exception:
            pass
    return [_read_one(reader, path, state) for path, state in items]


def _read_one(reader: Reader, path: Path, state: Any) -> ReadResult:
    from tunescope.ingest.rows import empty_result

    try:
        return reader.read(path, state)
    except OSError as e:
        problem = Problem(str(path), None, f"cannot read file: {e.strerror or e}")
    except Exception as e:
        problem = Problem(str(path), None, f"cannot read as {reader.format}: {e}")
    return empty_result(state or {}, [problem])


def _read_part(reader: Reader, path: Path, part: str, state: Any) -> ReadResult:
    """One run of a file that holds several; a failure becomes a problem."""
    from tunescope.ingest.rows import empty_result

    try:
        return reader.read_part(path, part, state)  # type: ignore[attr-defined]
    except Exception as e:
        problem = Problem(str(path), None, f"cannot read run {part} as {reader.format}: {e}")
    return empty_result(state or {}, [problem])


def _tagged(tables: list[pa.Table], tags: list[tuple[str, int, int, int]], seg: int) -> pa.Table:
    """The rows of many sources as one table, with the bookkeeping columns the
    store needs (run_id, src, gen, seg), built once for all of them."""
    import numpy as np

    table = pa.concat_tables(tables)
    counts = np.array([n for *_, n in tags], dtype=np.int64)
    runs = sorted({run for run, *_ in tags})
    code = {run: i for i, run in enumerate(runs)}
    codes = np.repeat(np.array([code[run] for run, *_ in tags], dtype=np.int32), counts)
    run_id = pa.DictionaryArray.from_arrays(codes, pa.array(runs, pa.string()))
    table = table.add_column(0, "run_id", run_id.cast(pa.string()))
    for k, name in ((1, "src"), (2, "gen")):
        values = np.repeat(np.array([tag[k] for tag in tags], dtype=np.int64), counts)
        table = table.append_column(name, pa.array(values, pa.int64()))
    return table.append_column("seg", pa.array(np.full(table.num_rows, seg, np.int64)))


def _segment_srcs(path: Path) -> list[list[int]]:
    try:
        table = pq.read_table(path, columns=["src", "gen"])
    except (OSError, pa.ArrowException):
        return []
    pairs = {
        (s, g) for s, g in zip(table["src"].to_pylist(), table["gen"].to_pylist(), strict=True)
    }
    return [list(p) for p in sorted(pairs)]
