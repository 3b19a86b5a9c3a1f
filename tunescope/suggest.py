""" "Did you mean" for a mistyped name: one helper for commands, options and
configuration keys."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_match(word: str, choices: Iterable[str]) -> str | None:
    """The known name closest to ``word`` (ignoring case, ``-`` versus ``_``), if any is close."""
    norm = {c.lower().replace("_", "-"): c for c in choices}
    hit = difflib.get_close_matches(word.lower().replace("_", "-"), list(norm), n=1, cutoff=0.6)
    return norm[hit[0]] if hit else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` when a known name is close to ``word``, else ``""``."""
    hit = close_match(word, choices)
    return f" (did you mean {hit!r}?)" if hit and hit != word else ""
