"""What a cache folder may hold, checked before anything in it is used.

A runs folder is often copied, shared or downloaded, and its cache
(``RUNS/.tunescope/``) with it: nothing read from the cache is trusted. Every
file name a manifest lists must be a bare name of the cache's own pattern
(``seg-N-TABLE.parquet``, ``findings-N.parquet``), is looked up in the cache's
own ``segments`` folder only, and must be a plain file there, not a link; the
folders and files the cache writes (``segments``, ``tmp``, ``ingest.lock``)
must be its own, not links elsewhere. A manifest that breaks any rule is
damaged: it is not acted on (no file it names is read or deleted), and the
cache is rebuilt from the logs.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path
from typing import Any

from tunescope.say import say

SEGMENT = re.compile(r"seg-(\d{1,18})-(steps|metrics|events)\.parquet")
FINDINGS = re.compile(r"findings-(\d{1,18})\.parquet")
NUMBERED = re.compile(r"(?:seg|findings)-(\d{1,18})(?:-[a-z]+)?\.parquet")
NUMBER_MAX = 10**15  # file and source numbers: far beyond any real cache, short names
INT64 = 2**63 - 1
_OPTIONAL_TYPES = {
    "size": int,
    "mtime_ns": int,
    "inode": int,
    "problem_count": int,
    "changed_at": float | int,
    "run_id": str,
    "format": str,
    "run_dir": str,
    "parent": str,
    "state": dict,
}


def manifest_fault(manifest: dict[str, Any], segments_dir: Path) -> str | None:
    """Why ``manifest`` (already of this version's top-level shape) must not
    be used, or None when every name and number in it is one the cache could
    have written and every file it names is a plain file in ``segments_dir``."""
    for key in ("next_seg", "next_src"):
        if not _int(manifest[key], 1, NUMBER_MAX):
            return f"{key} is not a file number"
    next_seg = manifest["next_seg"]
    for key, entry in manifest["sources"].items():
        fault = _source_fault(entry)
        if fault:
            return f"source {_short(key)}: {fault}"
    names: list[str] = []
    for seg in manifest["segments"]:
        m = SEGMENT.fullmatch(seg["file"])
        if m is None or m.group(2) != seg["table"]:
            return f"segment file {_short(seg['file'])} is not a segment name"
        if int(m.group(1)) >= next_seg:
            return f"segment file {seg['file']} is numbered past next_seg"
        if not _int(seg["rows"], 0, INT64):
            return f"segment {seg['file']}: rows is not a count"
        srcs = seg.get("srcs")
        if srcs is not None and not (
            isinstance(srcs, list)
            and all(
                isinstance(p, list) and len(p) == 2 and all(_int(x, 0, INT64) for x in p)
                for p in srcs
            )
        ):
            return f"segment {seg['file']}: srcs are not source numbers"
        names.append(seg["file"])
    findings = manifest["findings"]
    if findings is not None:
        m = FINDINGS.fullmatch(findings)
        if m is None or int(m.group(1)) >= next_seg:
            return f"findings file {_short(findings)} is not a findings name"
        names.append(findings)
    live = set(names)
    for item in manifest["trash"]:
        m = NUMBERED.fullmatch(item["file"])
        if m is None or int(m.group(1)) >= next_seg:
            return f"trash entry {_short(item['file'])} is not a segment name"
        if item["file"] in live:
            return f"trash entry {item['file']} is still in use"
        if not isinstance(item["since"], float | int) or item["since"] != item["since"]:
            return f"trash entry {item['file']} has no time"
    fault = _rows_fault(manifest)
    if fault:
        return fault
    if os.path.islink(segments_dir):
        return f"{segments_dir} is a link"
    for name in names:
        if not plain_or_missing(segments_dir / name):
            return f"{name} is not a plain file in {segments_dir}"
    return None


def _source_fault(entry: dict[str, Any]) -> str | None:
    for key in ("src", "gen"):
        if not _int(entry[key], 1 if key == "gen" else 0, INT64):
            return f"{key} is not a number"
    for key, kind in _OPTIONAL_TYPES.items():
        value = entry.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"{key} is of the wrong type"
    for p in entry["problems"]:
        if not (
            isinstance(p["path"], str)
            and isinstance(p["reason"], str)
            and (p["line"] is None or _int(p["line"], 0, INT64))
        ):
            return "a problem is of the wrong shape"
    if not all(_int(v, -INT64, INT64) for v in entry.get("max_step", {}).values()):
        return "max_step is not steps"
    return None


def _rows_fault(manifest: dict[str, Any]) -> str | None:
    """Sources and segments that do not agree: a segment holding rows of a
    source the manifest does not know (or of a generation not yet read), or
    a source that wrote rows that no segment holds. Either would drop rows
    from the views without a word."""
    current = {e["src"]: e["gen"] for e in manifest["sources"].values()}
    if len(current) != len(manifest["sources"]):
        return "two sources share a number"
    if any(src >= manifest["next_src"] for src in current):
        return "a source is numbered past next_src"
    held: set[tuple[int, int]] = set()
    for seg in manifest["segments"]:
        for src, gen in seg.get("srcs") or ():
            if src >= manifest["next_src"] or gen > current.get(src, gen):
                return f"segment {seg['file']} holds rows of source {src} not yet read"
            held.add((src, gen))
    if any(seg.get("srcs") is None for seg in manifest["segments"]):
        return None  # an older cache that did not list them: checked when retired
    for key, entry in manifest["sources"].items():
        if entry.get("max_step") and (entry["src"], entry["gen"]) not in held:
            return f"source {_short(key)}: its rows are in no segment"
    return None


def _int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _short(text: Any) -> str:
    text = repr(text)
    return text if len(text) <= 100 else text[:97] + "..."


def plain_or_missing(path: Path) -> bool:
    """Whether ``path`` is a plain file (not a link, folder or device), or absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    except (OSError, ValueError):  # too long a name, a NUL: not one of ours
        return False
    return stat.S_ISREG(st.st_mode)


def plain_file(path: Path) -> bool:
    """Whether ``path`` is a plain file (not a link, folder or device)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False


def own_folder(path: Path) -> None:
    """Make sure the cache's folder ``path`` is not a link or a file: such a
    thing is removed (a link only, never what it points to), said on stderr,
    so that the cache writes and deletes inside itself only. Best effort: a
    read-only cache is left as it is (nothing is then written there)."""
    _own(path, stat.S_ISDIR, "folder")


def own_file(path: Path) -> None:
    """As :func:`own_folder`, for a file the cache opens for writing (its lock)."""
    _own(path, stat.S_ISREG, "file")


def _own(path: Path, kind: Any, what: str) -> None:
    try:
        st = os.lstat(path)
    except OSError:
        return
    if kind(st.st_mode):
        return
    found = "a link" if stat.S_ISLNK(st.st_mode) else "not a " + what
    say(f"{path} is {found}, not the cache's own {what}; removing it (never what a link points to)")
    with contextlib.suppress(OSError):
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(path)  # an empty folder only: a folder with files stays and fails later
        else:
            os.unlink(path)
