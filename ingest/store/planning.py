"""Planning an ingest pass's reads: which sources changed since the manifest
was saved, how much of each is new, and the batches that hand them to their
readers (bounded in count and bytes, so memory stays bounded).

The one place the cache stats a source is :func:`stat`; sources are listed by
:func:`tunescope.ingest.discover.discover` and opened by their readers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tunescope.ingest.discover import Source
from tunescope.ingest.rows import Problem, Reader, ReadResult, empty_result
from tunescope.ingest.store.manifest import offset
from tunescope.say import say

BATCH = 2048  # sources handed to one read_batch call, at most...
BATCH_BYTES = 512 * 1024 * 1024  # ...and about this many bytes of them (memory stays bounded)

Stat = tuple[int, int, int]  # size, mtime_ns, inode


def stat(path: Path) -> Stat | None:
    """A source's size, mtime and inode; None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def changed(st: Stat | None, entry: dict[str, Any] | None) -> bool:
    """Whether a source differs from what its manifest entry recorded."""
    if entry is None:
        return True
    if st is None:
        return False
    return (entry.get("size"), entry.get("mtime_ns"), entry.get("inode")) != st


def unread_bytes(stats: dict[str, Stat | None], known: dict[str, Any]) -> dict[str, int]:
    """The bytes still to read in each source."""
    return {k: max((st[0] if st else 0) - offset(known.get(k)), 0) for k, st in stats.items()}


def batches(sources: list[Source], sizes: dict[str, int]) -> Iterator[list[Source]]:
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


def read_batches(
    changed: list[Source],
    sizes: dict[str, int],
    known: dict[str, Any],
    progress: Callable[..., None] | None,
) -> Iterator[list[tuple[Source, ReadResult]]]:
    """The changed sources read, a batch at a time, each by its reader; a
    source whose reader stopped at its bound (``ReadResult.more``) is read on
    in further batches, after the caller has recorded each part."""
    by_reader: dict[int, list[Source]] = {}
    for s in changed:
        by_reader.setdefault(id(s.reader), []).append(s)
    done = read_bytes = rows_done = 0
    total_bytes = sum(sizes.get(s.key, 0) for s in changed)
    for group in by_reader.values():
        reader = group[0].reader
        for batch in batches(group, sizes):
            while batch:
                before = {s.key: _state(known, s) for s in batch}
                out = _read_sources(reader, batch, known)
                finished = [s for s, r in out if not r.more]
                done += len(finished)
                read_bytes += sum(sizes.get(s.key, 0) for s in finished)
                if progress is not None:
                    rows_done += sum(r.rows for _, r in out)
                    progress(read_bytes, total_bytes, files=done, of=len(changed), rows=rows_done)
                yield out
                # A reader that stopped at its bound is called again once the
                # caller has recorded this part (``known`` then holds the state
                # it reached); never again from the same state.
                batch = [s for s, r in out if r.more and _state(known, s) != before[s.key]]


def _state(known: dict[str, Any], source: Source) -> Any:
    return (known.get(source.key) or {}).get("state")


def _read_sources(
    reader: Reader, batch: list[Source], known: dict[str, Any]
) -> list[tuple[Source, ReadResult]]:
    """One batch of one reader's sources read: the runs inside one file one
    by one, the files together."""
    out: list[tuple[Source, ReadResult]] = []
    for s in batch:
        if s.part is not None:
            state = (known.get(s.key) or {}).get("state")
            out.append((s, _read_part(reader, s.path, s.part, state)))
    files = [s for s in batch if s.part is None]
    items = [(s.path, (known.get(s.key) or {}).get("state")) for s in files]
    if items:
        out.extend(zip(files, _read_batch(reader, items), strict=True))
    return out


def _read_batch(reader: Reader, items: list[tuple[Path, Any]]) -> list[ReadResult]:
    """Call the reader; a file that cannot be read becomes a problem, never a crash.

    A batch read that fails as a read may fail (a file that went away or
    cannot be read) is retried a file at a time, so that the problem is named
    with its file. Any other failure is a bug in the batch read: it is said
    on stderr, and the files are read one at a time all the same."""
    batch = getattr(reader, "read_batch", None)
    if batch is not None:
        try:
            return batch(items)
        except OSError:
            pass  # the file-by-file read below names the file
        except Exception as e:
            say(
                f"the {reader.format} batch reader failed ({type(e).__name__}: {e}); "
                "reading the files one at a time"
            )
    return [_read_one(reader, path, state) for path, state in items]


def _read_one(reader: Reader, path: Path, state: Any) -> ReadResult:
    try:
        return reader.read(path, state)
    except OSError as e:
        problem = Problem(str(path), None, f"cannot read file: {e.strerror or e}")
    except Exception as e:
        problem = Problem(str(path), None, f"cannot read as {reader.format}: {e}")
    return empty_result(state or {}, [problem])


def _read_part(reader: Reader, path: Path, part: str, state: Any) -> ReadResult:
    """One run of a file that holds several; a failure becomes a problem."""
    try:
        return reader.read_part(path, part, state)  # type: ignore[attr-defined]  # only readers of multi-run files give parts
    except Exception as e:
        problem = Problem(str(path), None, f"cannot read run {part} as {reader.format}: {e}")
    return empty_result(state or {}, [problem])
