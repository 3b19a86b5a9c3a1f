"""Reader for tunescope's own logs: ``RUN/events/rank-N.jsonl`` (and the
``rank-N-SEQ.parquet`` copies when the JSONL is gone).

Three tiers read the same bytes to the same rows, quickest first:

- the DuckDB tier (:mod:`duckdb_tier`) parses clean chunks, many files in one
  query, and checks by counting quotes and commas that it read every line as
  the exact tier would; a chunk it cannot vouch for goes to the next tier;
- the Arrow tier (:mod:`arrow_tier`) parses what is left with Arrow's strict
  JSON reader and vectorised checks; a chunk that fails one goes to the next;
- the exact tier (:mod:`exact_tier`), in Python line by line, names the file
  and line of every problem. A chunk goes to it whenever a fast tier sees
  anything unusual (a malformed line, a wrong type, an unknown kind, a blank
  line), so every problem is reported the same way and no good line is lost.

Both fast tiers turn step lines into rows without Python per line (this is
what makes a first ingest of thousands of files quick). This module is the
reader itself: it sorts each batch's chunks between the tiers.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from tunescope.ingest.live.tail import Chunk, read_new_lines
from tunescope.ingest.readers.native import arrow_tier, duckdb_tier
from tunescope.ingest.readers.native.exact_tier import (
    RANK_JSONL,
    RANK_PARQUET,
    read_exact,
    read_parquet,
)
from tunescope.ingest.rows import ReadResult

# Chunks smaller than this are parsed in Python: the fast path's fixed cost
# per chunk is larger than the parse.
FAST_PATH_MIN_BYTES = 64 * 1024
# What one read of one file decodes at most: a larger file is read in parts
# (each recorded before the next is read). Rows and their strings take about
# ten times the bytes of their lines while they are built, so memory follows
# this bound and not the size of the file.
READ_BYTES = 8 * 1024 * 1024
READ_LINES = 65_536


class NativeReader:
    """tunescope event logs, schema v1."""

    format = "tunescope"

    def detect(self, path: Path) -> bool:
        if path.parent.name != "events":
            return False
        if RANK_JSONL.match(path.name):
            return True
        m = RANK_PARQUET.match(path.name)
        return m is not None and not (path.parent / f"rank-{m.group(1)}.jsonl").exists()

    def run_dir(self, path: Path) -> Path:
        return path.parent.parent

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult:
        return self.read_batch([(path, state)])[0]

    def read_batch(self, items: list[tuple[Path, dict[str, Any] | None]]) -> list[ReadResult]:
        """Read many sources at once. Clean chunks are parsed in parts on worker
        threads while the next files are still being read: a large chunk in
        parts of its own size, small ones (a run of a few hundred steps) many
        to a part, so that they share the fast tiers' fixed cost; small ones
        too few to be worth it are read by the exact path."""
        from concurrent.futures import ThreadPoolExecutor

        results: list[ReadResult | None] = [None] * len(items)
        more = [False] * len(items)
        workers = min(os.cpu_count() or 1, 8)
        total = 0
        for path, _ in items:
            with contextlib.suppress(OSError):
                total += os.stat(path).st_size
        target = max(total / (2 * workers), FAST_PATH_MIN_BYTES)  # two parts a worker
        fast: list[tuple[int, Path, Chunk]] = []
        parts: dict[bool, list[tuple[int, Path, Chunk]]] = {True: [], False: []}
        sizes = {True: 0, False: 0}
        done: dict[int, ReadResult] = {}
        with ThreadPoolExecutor(workers) as pool:
            futures = []
            for i, (path, state) in enumerate(items):
                if RANK_PARQUET.match(path.name):
                    results[i] = read_parquet(path, state)
                    continue
                chunk = read_new_lines(path, state, READ_BYTES, READ_LINES)
                more[i] = chunk.more
                if not chunk.data or not _looks_clean(chunk.data):
                    results[i] = read_exact(path, chunk)
                    continue
                large = len(chunk.data) >= FAST_PATH_MIN_BYTES
                fast.append((i, path, chunk))
                parts[large].append((i, path, chunk))
                sizes[large] += len(chunk.data)
                if sizes[large] >= target:
                    futures.append(pool.submit(_read_fast, parts[large]))
                    parts[large], sizes[large] = [], 0
            if parts[True]:
                futures.append(pool.submit(_read_fast, parts[True]))
            if sizes[False] >= FAST_PATH_MIN_BYTES or (futures and parts[False]):
                futures.append(pool.submit(_read_fast, parts[False]))
            for future in futures:
                done.update(future.result())
        for i, path, chunk in fast:
            results[i] = done.get(i) or read_exact(path, chunk)
        for i, result in enumerate(results):
            if result is not None:
                result.more = more[i]
        return [r for r in results if r is not None]


def _looks_clean(data: bytes) -> bool:
    # Blank lines need no scan here: Arrow skips them, so the fast path's row
    # count falls short of the line count and the chunk goes the exact way.
    return b"\r" not in data


def _read_fast(part: list[tuple[int, Path, Chunk]]) -> dict[int, ReadResult]:
    """Parse clean chunks (one worker's share of a batch): with DuckDB where it
    can vouch for every line, with Arrow's JSON reader for the rest. Returns
    results only for chunks that passed every check; the caller sends the
    others to the exact path."""
    done = duckdb_tier.read_part(part)
    rest = [item for item in part if item[0] not in done]
    if rest:
        done.update(arrow_tier.read_chunks(rest))
    return done
