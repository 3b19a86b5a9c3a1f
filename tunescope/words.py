"""Words for messages: counts with the right plural."""

from __future__ import annotations


def count(n: int, word: str, plural: str | None = None) -> str:
    """``1 run``, ``2 runs``, ``1,200 files``; ``plural`` for irregular words."""
    return f"{n:,} {word if n == 1 else (plural or word + 's')}"
