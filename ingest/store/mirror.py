"""A local mirror of the log objects under a URL, kept current by byte ranges.

Ingest of a URL root is ingest of a local folder that mirrors it: each poll
lists the objects once, fetches only what changed, and then the local readers
(the same ones as for a folder, with their offsets and fingerprints) read the
mirror. Per object, against what the last poll saw:

- same size and ETag: nothing is fetched;
- larger: only the new bytes are fetched (a byte-range request), together with
  the FINGERPRINT bytes before them, which must equal the end of the mirrored
  copy; when they do not, the object was rewritten and is fetched whole;
- smaller, or same size with a new ETag: rewritten, fetched whole (into a new
  file, so the readers see a new inode and read it from the start);
- gone: its copy is removed (and with it, its rows).

Nothing is half-written: an object's bytes are fetched whole (with retries)
before its copy changes; a whole copy is written under a temporary name and
renamed; ``mirror.json`` records what each copy holds and is saved after each
batch, and a copy whose size disagrees with it is fetched whole again.

Model weights and other large binaries that no reader takes are never fetched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunescope.batches import size_batches
from tunescope.files import remove_dead_temps, temp_beside, write_whole
from tunescope.ingest.discover import SKIP_DIRS
from tunescope.ingest.live.tail import FINGERPRINT
from tunescope.ingest.rows import Problem
from tunescope.ingest.store.cache import Cache, IngestReport
from tunescope.ingest.store.mirror_paths import key_of_name, mirror_paths
from tunescope.ingest.store.remote import ObjectInfo, Remote, is_url

MIRROR = "mirror"  # the folder inside the cache dir
STATE = "mirror.json"
BATCH_OBJECTS = 512  # objects fetched per batch, at most...
BATCH_BYTES = 64 * 1024 * 1024  # ...and about this many bytes (memory stays bounded)
PIECE = 32 * 1024 * 1024  # a larger object is fetched in pieces of this size, one in memory
# Objects no reader takes and that may be huge: checkpoints, weights, archives.
SKIP_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".onnx",
    ".h5",
    ".pkl",
    ".pickle",
    ".npy",
    ".npz",
    ".msgpack",
    ".arrow",
    ".tar",
    ".zip",
    ".gz",
)


def wanted(rel: str, size: int = 1) -> bool:
    """Whether an object may hold logs: not a folder marker (an empty
    ``name/``), not under a folder no reader looks in, not weights or an
    archive. Any key is safe: :func:`mirror_paths` confines it."""
    parts = rel.split("/")
    if rel.endswith("/") and size == 0:
        return False
    if any(p in SKIP_DIRS for p in parts[:-1]):
        return False
    return not parts[-1].lower().endswith(SKIP_SUFFIXES)


def remote_cache_dir(url: str) -> Path:
    """The cache of a URL root: a folder in the user cache dir (XDG), keyed by the URL."""
    import platformdirs

    url = url.rstrip("/")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", url.split("://", 1)[-1]).strip("-")[:48]
    digest = hashlib.sha1(url.encode()).hexdigest()[:16]
    return Path(platformdirs.user_cache_dir("tunescope")) / f"{slug}-{digest}"


@dataclass
class SyncReport:
    """What one poll of the mirror did."""

    objects: int = 0  # objects listed that may hold logs
    fetched: int = 0  # objects whose copy changed
    appended: int = 0  # ...of them, by their new bytes only
    removed: int = 0
    listings: int = 0
    reads: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)  # objects that could not be mirrored


class Mirror:
    """The mirror of one URL in ``cache_dir/mirror``."""

    def __init__(self, url: str, cache_dir: Path) -> None:
        self.url = url.rstrip("/")
        self.remote = Remote(self.url)
        self.cache_dir = Path(cache_dir)
        self.root = self.cache_dir / MIRROR
        self.state_path = self.cache_dir / STATE

    def sync(self) -> SyncReport:
        """List once, fetch what changed, and make the mirror match the listing."""
        r = self.remote
        before = (r.listings, r.reads, r.bytes_read)
        started = time.perf_counter()
        listing = [o for o in r.list() if wanted(o.rel, o.size)]
        self.root.mkdir(parents=True, exist_ok=True)
        remove_dead_temps(self.root, recursive=True)  # copies a killed sync left half-written
        state = self._load()
        report = SyncReport(objects=len(listing))
        paths = mirror_paths(o.rel for o in listing)
        for rel in list(state):
            # gone, or its copy must move (a key that other keys now sit below)
            if paths.get(rel) != state[rel]["path"]:
                self._remove(state.pop(rel)["path"])
                report.removed += rel not in paths
        plan: list[tuple[ObjectInfo, int]] = []  # (object, first byte to fetch)
        for obj in listing:
            old = state.get(obj.rel)
            held = self._size(paths[obj.rel]) if old is not None else None
            if old is not None and held == old["size"]:
                if old["size"] == obj.size and old["etag"] == obj.etag:
                    continue
                if obj.size > old["size"] > 0:
                    plan.append((obj, max(old["size"] - FINGERPRINT, 0)))
                    continue
            plan.append((obj, 0))
        large = [(o, s) for o, s in plan if o.size - s > PIECE]
        plan = [(o, s) for o, s in plan if o.size - s <= PIECE]
        for obj, start in large:
            if self._fetch_pieces(obj, start, paths, state, report):
                self._fetch_pieces(obj, 0, paths, state, report)  # rewritten: whole
            self._save(state)
        for batch in size_batches(plan, lambda o: o[0].size - o[1], BATCH_BYTES, BATCH_OBJECTS):
            again = self._fetch(batch, paths, state, report)
            if again:  # appended objects that turned out rewritten: fetched whole
                self._fetch([(o, 0) for o in again], paths, state, report)
            self._save(state)
        if report.removed and not plan:
            self._save(state)
        self._keys = {v["path"]: k for k, v in state.items()}
        report.listings = r.listings - before[0]
        report.reads = r.reads - before[1]
        report.bytes_read = r.bytes_read - before[2]
        report.seconds = time.perf_counter() - started
        return report

    def _fetch(
        self,
        batch: list[tuple[ObjectInfo, int]],
        paths: dict[str, str],
        state: dict[str, Any],
        report: SyncReport,
    ) -> list[ObjectInfo]:
        """Fetch a batch, then change the copies; returns the appended objects
        whose earlier bytes changed (rewritten: to fetch whole). An object
        whose copy cannot be written is one problem, and is tried again at
        the next sync."""
        fetch = [(o, start) for o, start in batch if o.size > start]
        data = self.remote.read_ranges(
            [o.rel for o, _ in fetch], [s for _, s in fetch], [o.size for o, _ in fetch]
        )
        got = {o.rel: d for (o, _), d in zip(fetch, data, strict=True)}
        rewritten = []
        for obj, start in batch:
            rel = paths[obj.rel]
            body = got.get(obj.rel, b"")
            if body is None:
                state.pop(obj.rel, None)
                self._remove(rel)
                where = f"{self.url}/{obj.rel}"
                report.problems.append(Problem(where, None, "deleted since it was listed; skipped"))
                continue
            try:
                if start:
                    path = self._inside(rel)
                    held = state[obj.rel]["size"]
                    overlap = held - start
                    if body[:overlap] != _tail(path, overlap):
                        rewritten.append(obj)
                        continue
                    with open(path, "ab") as f:
                        f.write(body[overlap:])
                    report.appended += 1
                else:
                    self._clear_way(rel)
                    _write_whole(self._inside(rel), body)
            except OSError as e:
                state.pop(obj.rel, None)
                self._remove(rel)
                why = e.strerror or str(e)
                where = f"{self.url}/{obj.rel}"
                report.problems.append(Problem(where, None, f"cannot copy into the mirror: {why}"))
                continue
            state[obj.rel] = {"size": obj.size, "etag": obj.etag, "path": rel}
            report.fetched += 1
        return rewritten

    def _fetch_pieces(
        self,
        obj: ObjectInfo,
        start: int,
        paths: dict[str, str],
        state: dict[str, Any],
        report: SyncReport,
    ) -> bool:
        """Fetch one large object from ``start`` a piece at a time, so memory
        holds one piece whatever the object's size: a new copy is written
        under a temporary name and renamed when whole, an appended one grows
        in place once its overlap matched. True: the appended object's earlier
        bytes changed (rewritten: fetch it whole)."""
        rel = paths[obj.rel]
        where = f"{self.url}/{obj.rel}"
        path = self._inside(rel)
        tmp: Path | None = None
        try:
            if start:
                held = state[obj.rel]["size"]
                overlap = held - start
                got = self.remote.read_ranges([obj.rel], [start], [held])[0]
                if got is not None and got != _tail(path, overlap):
                    return True
                pos, out = held, open(path, "ab")  # noqa: SIM115 (closed below)
            else:
                self._clear_way(rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = temp_beside(path)
                got, pos, out = b"", 0, open(tmp, "wb")  # noqa: SIM115 (closed below)
            with out:
                while got is not None and pos < obj.size:
                    end = min(pos + PIECE, obj.size)
                    got = self.remote.read_ranges([obj.rel], [pos], [end])[0]
                    if got is not None:
                        out.write(got)
                        pos = end
            if got is None:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
                state.pop(obj.rel, None)
                self._remove(rel)
                report.problems.append(Problem(where, None, "deleted since it was listed; skipped"))
                return False
            if tmp is not None:
                os.replace(tmp, path)
            else:
                report.appended += 1
        except OSError as e:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            state.pop(obj.rel, None)
            self._remove(rel)
            why = e.strerror or str(e)
            report.problems.append(Problem(where, None, f"cannot copy into the mirror: {why}"))
            return False
        state[obj.rel] = {"size": obj.size, "etag": obj.etag, "path": rel}
        report.fetched += 1
        return False

    # ---- the mirror's own files: nothing outside it is read, written or removed ----

    def _inside(self, rel: str) -> Path:
        """The mirror path ``rel`` (from :func:`mirror_paths`, or a state file
        checked by :func:`_valid_path`); an OSError when a folder on the way
        is a link (a copied or tampered cache must not lead writes outside)."""
        path = self.root
        for name in rel.split("/")[:-1]:
            path = path / name
            if path.is_symlink():
                raise OSError(f"{path} is a link")
        return path / rel.rsplit("/", 1)[-1]

    def _size(self, rel: str) -> int | None:
        """The size of a copy when it is a plain file in the mirror."""
        try:
            st = os.lstat(self._inside(rel))
        except (OSError, ValueError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def _remove(self, rel: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._inside(rel).unlink()

    def _clear_way(self, rel: str) -> None:
        """Remove what an older listing left where this copy goes: a file where
        a folder is needed, or a folder (of copies no longer listed) where the
        file goes."""
        path = self.root
        for name in rel.split("/")[:-1]:
            path = path / name
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                path.unlink()
        path = self._inside(rel)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)

    def _load(self) -> dict[str, Any]:
        """What each copy holds, from ``mirror.json``: entries that are not of
        its shape (a damaged or tampered file) are dropped, and fetched again."""
        try:
            with open(self.state_path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("url") != self.url:
            return {}
        objects = data.get("objects")
        if not isinstance(objects, dict):
            return {}
        out = {}
        for key, entry in objects.items():
            if not isinstance(entry, dict):
                continue
            path = entry.get("path", key)  # older mirrors kept a key's copy at the key
            size, etag = entry.get("size"), entry.get("etag")
            if (
                _valid_path(path)
                and isinstance(size, int)
                and not isinstance(size, bool)
                and size >= 0
                and isinstance(etag, str | None)
            ):
                out[key] = {"size": size, "etag": etag, "path": path}
        return out

    def _save(self, state: dict[str, Any]) -> None:
        write_whole(self.state_path, json.dumps({"url": self.url, "objects": state}))

    _keys: dict[str, str] | None = None

    def url_of(self, rel: str) -> str:
        """The URL of a path in the mirror (a copy, or a folder of them)."""
        if self._keys is None:
            self._keys = {v["path"]: k for k, v in self._load().items()}
        key = self._keys.get(rel)
        if key is None and "%~" in rel:  # a hashed name: a copy below has its whole key
            names = rel.split("/")
            below = next((k for p, k in self._keys.items() if p.startswith(rel + "/")), None)
            if below is not None:
                key = "/".join(below.split("/")[: len(names)])
        if key is None:
            key = "/".join(key_of_name(name) for name in rel.split("/"))
        return f"{self.url}/{key}"


def _valid_path(path: Any) -> bool:
    """A relative mirror path whose every name is a file name."""
    if not isinstance(path, str) or not path or "\x00" in path:
        return False
    names = path.split("/")
    return all(
        n not in ("", ".", "..") and len(n.encode("utf-8", "surrogateescape")) <= 255 for n in names
    )


class MirrorCache(Cache):
    """The cache of a URL root: each ingest first brings the mirror up to date,
    then reads it like a local folder. Paths in problems name the objects."""

    def __init__(self, url: str, cache_dir: str | Path | None = None) -> None:
        self.url = url.rstrip("/")
        where = Path(cache_dir) if cache_dir else remote_cache_dir(self.url)
        self.mirror = Mirror(self.url, where)
        try:
            self.mirror.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            from tunescope.errors import StoreError

            raise StoreError(
                f"cannot create the cache directory {where}: {e.strerror or e}; "
                "pass --cache-dir to put it elsewhere"
            ) from None
        super().__init__(self.mirror.root, where)
        self.last_sync: SyncReport | None = None

    def ingest(self, readers: Any = None, progress: Any = None) -> IngestReport:
        with self.lock(), self._writing():
            self.last_sync = self.mirror.sync()
        report = super().ingest(readers, progress)
        report.problems[:0] = self.last_sync.problems
        report.new_problems[:0] = self.last_sync.problems
        report.skipped += len(self.last_sync.problems)
        report.root = self.url  # type: ignore[assignment]  # a URL root: reports name it, not the mirror
        report.problems = [self._named(p) for p in report.problems]
        report.new_problems = [self._named(p) for p in report.new_problems]
        report.unclaimed = [(Path(self._url_of(str(p))), why) for p, why in report.unclaimed]
        return report

    def load_manifest(self) -> dict[str, Any]:
        """The manifest, with each run's folder named by its URL (the ``path``
        column of the ``runs`` view shows where the run is, not its mirror)."""
        manifest = super().load_manifest()
        for entry in manifest["sources"].values():
            if isinstance(entry.get("run_dir"), str):
                entry["run_dir"] = self._url_of(entry["run_dir"])
        return manifest

    def _url_of(self, path: str) -> str:
        base = str(self.mirror.root)
        if path == base:
            return self.url
        if path.startswith(base + os.sep):
            return self.mirror.url_of(path[len(base) + 1 :].replace(os.sep, "/"))
        return path

    def _named(self, p: Problem) -> Problem:
        return Problem(self._url_of(p.path), p.line, p.reason)


def open_cache(root: str | Path, cache_dir: str | Path | None = None) -> Cache:
    """The cache of a runs root: a local folder, or a URL (mirrored)."""
    if is_url(root):
        return MirrorCache(str(root), cache_dir)
    return Cache(Path(root), Path(cache_dir) if cache_dir else None)


def _tail(path: Path, n: int) -> bytes:
    if n <= 0:
        return b""
    with open(path, "rb") as f:
        f.seek(-n, os.SEEK_END)
        return f.read(n)


def _write_whole(path: Path, body: bytes) -> None:
    """Write under a temporary name and rename: a new file (a new inode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, body)
