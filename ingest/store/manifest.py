"""The cache's manifest (``manifest.json``): every source with how far it was
read (offset, generation, problems) and every segment with the sources whose
rows it holds. Loaded at the start of an ingest pass and saved, whole and
atomically, at its end; readers load it without a lock.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tunescope.files import write_whole
from tunescope.ingest.store.trust import manifest_fault
from tunescope.say import say

if TYPE_CHECKING:
    from tunescope.ingest.discover import Source
    from tunescope.ingest.rows import ReadResult

MANIFEST_VERSION = 2  # 2: no min/max statistics on float columns (a cache of 1 is rebuilt)
MAX_PROBLEMS_PER_SOURCE = 200
TABLES = ("steps", "metrics", "events")


def load(path: Path, root: Path, cache_dir: Path) -> dict[str, Any]:
    """The manifest of ``root``'s cache in ``cache_dir``; a new, empty one when
    there is none, or when the file is damaged, of another shape or of
    another root, or names a file the cache could not have written (each
    said on stderr: the logs are the truth, the cost is a re-read). Nothing
    a refused manifest names is read or deleted."""
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return new(root)
    except (OSError, ValueError):
        say(f"{path} is unreadable; re-ingesting")
        return new(root)
    if not shaped(manifest):
        version = manifest.get("version") if isinstance(manifest, dict) else None
        if not isinstance(version, int) or version == MANIFEST_VERSION:  # not an old one
            say(f"{path} is not a tunescope manifest; re-ingesting")
        return new(root)
    fault = manifest_fault(manifest, cache_dir / "segments")
    if fault is not None:
        say(f"{path} is damaged ({fault}); rebuilding the cache from the logs")
        return new(root)
    resolved = str(root.resolve())
    if manifest.get("root") != resolved:
        if cache_dir.resolve().parent != Path(resolved):
            # A cache dir shared with another runs root: start over rather
            # than mix two roots' rows.
            say(f"{cache_dir} held the cache of {manifest.get('root')}; re-ingesting {resolved}")
            return new(root)
        manifest["root"] = resolved  # the runs folder moved with its cache inside it
    return manifest


def save(path: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest whole, then rename it into place."""
    # one dumps (C encoder) and one write: json.dump streams through
    # Python-level chunks, several times slower for thousands of sources
    write_whole(path, json.dumps(manifest, separators=(",", ":")))


def new(root: Path) -> dict[str, Any]:
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


def shaped(manifest: Any) -> bool:
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
    return (
        all(_entry_shaped(entry) for entry in sources.values())
        and all(_segment_shaped(seg) for seg in segments)
        and all(
            isinstance(t, dict)
            and isinstance(t.get("file"), str)
            and isinstance(t.get("since"), float | int)
            for t in trash
        )
    )


def _entry_shaped(entry: Any) -> bool:
    return (
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
    )


def _segment_shaped(seg: Any) -> bool:
    return (
        isinstance(seg, dict)
        and isinstance(seg.get("file"), str)
        and seg.get("table") in TABLES
        and isinstance(seg.get("rows"), int)
    )


def new_entry(manifest: dict[str, Any], source: Source, old: dict | None) -> dict[str, Any]:
    """A source's entry: a new source number, or for a source re-read from
    the start the next generation (its older rows stop counting)."""
    if old is not None:  # same source, re-read: a new generation supersedes the old rows
        fresh = {**old, "gen": old["gen"] + 1, "problems": [], "problem_count": 0}
        fresh.pop("max_step", None)
        fresh.pop("overlap", None)
        return fresh
    src = manifest["next_src"]
    manifest["next_src"] = src + 1
    return {"src": src, "gen": 1, "problems": [], "problem_count": 0}


def offset(entry: dict[str, Any] | None) -> int:
    """The byte offset a source was read to (0 when unknown)."""
    state = (entry or {}).get("state")
    at = state.get("offset", 0) if isinstance(state, dict) else 0
    return at if isinstance(at, int) else 0


def note_overlap(entry: dict[str, Any], result: ReadResult) -> None:
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
