"""One fan-out task, as the Spark and Ray helpers run it (``tunescope.spark``,
``tunescope.ray``).

A job is a list of groups; a group is a list of paths (folders, run folders
or URLs), or one path. A task calls :func:`tunescope.analyze_runs` on its
group. A group that cannot be analysed (a path that does not exist, a bucket
that cannot be read) does not fail its task: the task returns the error as
text (``InputError: s3://...: no such bucket ...``), the engine carries it back
like any result, and the driver raises it again as the same class with the
same one-line message (:func:`raise_error`). So a user's mistake never ends
in an engine's stack trace, and the other groups' findings still arrive.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pyarrow as pa

from tunescope import errors
from tunescope.errors import TunescopeError, UsageError
from tunescope.fanout import analyze_runs

Groups = Iterable["str | Path | Sequence[str | Path]"]


def as_groups(groups: Groups | str | Path) -> list[list[str]]:
    """Each group as a list of path strings; a bare path is a group of one
    (and a bare path given for the groups, one group)."""
    out: list[list[str]] = []
    for g in [groups] if isinstance(groups, (str, Path)) else groups:
        paths = [g] if isinstance(g, (str, Path)) else list(g) if isinstance(g, Iterable) else []
        if not paths or not all(isinstance(p, (str, Path)) for p in paths):
            raise UsageError(f"group {len(out)}: expected a path or a list of paths, got {g!r}")
        out.append([str(p) for p in paths])
    if not out:
        raise UsageError("no runs to analyse: give at least one path")
    return out


def options(
    cache_dir: str | Path | None, select: Sequence[str] | None, ignore: Sequence[str] | None
) -> dict[str, Any]:
    """``analyze_runs``'s keyword arguments as plain data (sent to each task)."""
    return {
        "cache_dir": str(cache_dir) if cache_dir is not None else None,
        "select": list(select) if select is not None else None,
        "ignore": list(ignore) if ignore is not None else None,
    }


def run_group(paths: list[str], opts: dict[str, Any]) -> tuple[pa.Table | None, str | None]:
    """One task: the group's findings, or its error as ``Class: message``."""
    try:
        return analyze_runs(paths, **opts), None
    except TunescopeError as e:
        return None, f"{type(e).__name__}: {e}"


def raise_error(text: str) -> NoReturn:
    """Raise a task's error again, as its class with its message."""
    name, _, message = text.partition(": ")
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, TunescopeError):
        raise cls(message)
    raise TunescopeError(text)
