"""The cache's segment files: immutable Parquet files, each written whole
under a temporary name and renamed into place; merged when there are many;
deleted once no manifest a reader may hold still names them.

Segments are named ``seg-N-TABLE.parquet`` and findings ``findings-N.parquet``,
where N is the manifest's ``next_seg`` when the pass that wrote them began.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from tunescope.files import remove_dead_temps, replacing, temp_beside
from tunescope.ingest.store.duck import connect_duckdb, fetch_arrow
from tunescope.ingest.store.manifest import TABLES
from tunescope.ingest.store.trust import NUMBERED
from tunescope.ingest.store.views import EMPTY, FINDINGS_SCHEMA

TRASH_GRACE_S = 120.0  # superseded segment files are deleted after this long
# How segments are written. Min/max statistics only for the key columns: the
# store's views read the segments directly, and DuckDB prunes row groups by
# statistics that leave NaN out (`WHERE isnan(loss)` would find nothing).
PARQUET = {
    "compression": "zstd",
    "compression_level": 1,
    "write_statistics": ["run_id", "rank", "step", "src", "gen", "seg", "seq", "name", "kind"],
}


def write_parquet(segments_dir: Path, table: pa.Table, name: str) -> str:
    """Write ``table`` as the segment file ``name``, whole or not at all."""
    path = segments_dir / name
    with replacing(path) as tmp:
        pq.write_table(table, tmp, **PARQUET)
    return name


class SegmentWriter:
    """One table's rows of an ingest pass as one Parquet segment, written a
    batch at a time on a background thread (writing overlaps the reading of
    the next batch) under a temporary name, renamed into place when whole."""

    def __init__(self, segments_dir: Path, name: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.name = name
        self.path = segments_dir / name
        self.tmp = temp_beside(self.path)
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


def tagged(tables: list[pa.Table], tags: list[tuple[str, int, int, int]], seg: int) -> pa.Table:
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


def _srcs_of(table: pa.Table) -> list[list[int]]:
    """The sorted (src, gen) pairs whose rows ``table`` holds."""
    pairs = {
        (s, g) for s, g in zip(table["src"].to_pylist(), table["gen"].to_pylist(), strict=True)
    }
    return [list(p) for p in sorted(pairs)]


def segment_srcs(path: Path) -> list[list[int]]:
    try:
        table = pq.read_table(path, columns=["src", "gen"])
    except (OSError, pa.ArrowException):
        return []
    return _srcs_of(table)


def retire(manifest: dict[str, Any], segments_dir: Path) -> None:
    """Move segments with no live rows to the trash."""
    live = {(e["src"], e["gen"]) for e in manifest["sources"].values()}
    keep = []
    for seg in manifest["segments"]:
        srcs = seg.get("srcs")
        if srcs is None:
            srcs = seg["srcs"] = segment_srcs(segments_dir / seg["file"])
        if any(tuple(s) in live for s in srcs):
            keep.append(seg)
        else:
            manifest["trash"].append({"file": seg["file"], "since": time.time()})
    manifest["segments"] = keep


def merge(manifest: dict[str, Any], segments_dir: Path) -> None:
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
    try:
        for t in TABLES:
            segs = [s for s in manifest["segments"] if s["table"] == t]
            if len(segs) < 2:
                keep.extend(segs)
                continue
            big = max(segs, key=lambda s: s["rows"])
            if big["rows"] >= 4 * (sum(s["rows"] for s in segs) - big["rows"]):
                keep.append(big)
                segs = [s for s in segs if s is not big]
            files = [str(segments_dir / s["file"]) for s in segs]
            table = fetch_arrow(
                con,
                "SELECT * FROM read_parquet(?) SEMI JOIN live USING (src, gen) ORDER BY seg, seq",
                [files],
            )
            name = write_parquet(segments_dir, table, f"seg-{seg:08d}-{t}.parquet")
            merged.append(
                {"file": name, "table": t, "rows": table.num_rows, "srcs": _srcs_of(table)}
            )
            retired.extend(segs)
    except duckdb.Error:
        # a listed segment went away under the merge (deleted by hand): merge
        # nothing now; the next ingest finds it missing and rebuilds the cache
        for done in merged:
            (segments_dir / done["file"]).unlink(missing_ok=True)
        return
    finally:
        con.close()
    now = time.time()
    manifest["trash"].extend({"file": s["file"], "since": now} for s in retired)
    manifest["segments"] = keep + merged


def empty_trash(manifest: dict[str, Any], segments_dir: Path) -> None:
    """Delete the trashed files no reader can still be opening."""
    now = time.time()
    keep = []
    for item in manifest["trash"]:
        if now - item["since"] < TRASH_GRACE_S:
            keep.append(item)
            continue
        with contextlib.suppress(FileNotFoundError):
            (segments_dir / item["file"]).unlink()
    manifest["trash"] = keep


def unreadable(manifest: dict[str, Any], segments_dir: Path) -> str | None:
    """The first file the manifest lists that the views cannot read: gone, cut
    short, not Parquet, or without the columns of its table (a file put there
    by hand). Its footer is read, not its rows; None when all are whole."""
    files = [(seg["file"], EMPTY[seg["table"]]) for seg in manifest["segments"]]
    if manifest.get("findings"):
        files.append((manifest["findings"], FINDINGS_SCHEMA))
    return next((n for n, schema in files if not _has_columns(segments_dir / n, schema)), None)


def _has_columns(path: Path, schema: pa.Schema) -> bool:
    """Whether ``path`` is a whole Parquet file with ``schema``'s columns, each
    of the same kind (integer, floating point, text)."""
    try:
        with pq.ParquetFile(path) as f:  # the footer only (faster than read_schema)
            found = f.schema_arrow
    except (OSError, pa.ArrowException):
        return False
    for want in schema:
        i = found.get_field_index(want.name)
        if i < 0 or _kind(found.field(i).type) != _kind(want.type):
            return False
    return True


def _kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view":
        return "text"
    return str(t)


def clean_orphans(cache_dir: Path, segments_dir: Path, next_seg: int) -> None:
    """Remove what killed or failed passes left behind: temporary files
    (``.NAME.PID.tmp``, and ``manifest.PID.tmp`` of older versions) of
    processes that no longer run, and whole segment files no saved manifest
    refers to."""
    patterns = ((segments_dir, ".*.tmp"), (cache_dir, ".*.tmp"), (cache_dir, "manifest.*.tmp"))
    for folder, pattern in patterns:
        remove_dead_temps(folder, pattern)
    remove_uncommitted(segments_dir, next_seg)


def remove_uncommitted(segments_dir: Path, first: int) -> None:
    """Remove segment and findings files numbered ``first`` and up: a pass
    wrote them and stopped before its manifest was saved, so no reader can
    know them (every saved manifest numbers its files below its
    ``next_seg``). Called under the lock only."""
    with contextlib.suppress(OSError):
        for path in segments_dir.glob("*.parquet"):
            m = NUMBERED.fullmatch(path.name)
            if m and int(m.group(1)) >= first:
                with contextlib.suppress(OSError):
                    path.unlink()
