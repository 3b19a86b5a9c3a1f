"""Compute time by rank and step window, coloured against the window's median.

All ranks wait for the slowest at each collective, so total step times are
equal; the time a rank spends before it waits (``compute_time_s``) is what
differs. A straggler shows up as one row that stays orange or red across
windows while the others stay green.
"""

from __future__ import annotations

import statistics

from rich.text import Text
from textual.widgets import Static

from tunescope.report.curves import SCALE, STRAGGLER_RATIO, colour_for, others_median

LABEL = 9  # "rank 12 " column
SUMMARY = 16  # "  0.351s  1.62x" column


def windows_for(width: int) -> int:
    """How many step windows fit a grid ``width`` cells wide (two cells each)."""
    return max(1, min(60, (width - LABEL - SUMMARY - 2) // 2))


class RankGrid(Static):
    """Renders a :class:`~tunescope.tui.messages.RankGridLoaded` result."""

    def __init__(self, id: str | None = None) -> None:
        super().__init__("loading…", id=id)
        self.slowest: tuple[int, float] | None = None

    def show(
        self,
        ranks: list[int],
        windows: list[tuple[int, int]],
        grid: list[list[float | None]],
        metric: str,
    ) -> None:
        if not ranks:
            self.slowest = None
            self.update("no compute or step times logged for this run")
            return
        means = [
            statistics.fmean([v for v in row if v is not None])
            if any(v is not None for v in row)
            else None
            for row in grid
        ]

        text = Text()
        text.append(
            f"{metric} by rank (rows) and step window (columns), "
            "coloured by time / the median of the other ranks in that window\n\n",
            style="dim",
        )
        text.append(" " * LABEL)
        text.append(f"steps {windows[0][0]}", style="dim")
        last = f"{windows[-1][1]}"
        pad = len(windows) * 2 - len(f"steps {windows[0][0]}") - len(last)
        text.append(" " * max(1, pad) + last + "\n", style="dim")
        worst: tuple[int, float] | None = None
        for i, rank in enumerate(ranks):
            text.append(f"rank {rank:<3} ", style="bold")
            for w, v in enumerate(grid[i]):
                med = others_median([row[w] for row in grid], i)
                if v is None or not med:
                    text.append("··", style="dim")
                    continue
                text.append("██", style=colour_for(v / med))
            mean = means[i]
            overall = others_median(means, i)
            if mean is not None and overall:
                ratio = mean / overall
                style = colour_for(ratio)
                text.append(f"  {mean:7.3f}s {ratio:5.2f}x", style=style)
                if worst is None or ratio > worst[1]:
                    worst = (rank, ratio)
            text.append("\n")
        text.append("\n")
        self.slowest = worst
        if worst and len(ranks) > 1 and worst[1] >= STRAGGLER_RATIO:
            text.append(
                f"straggler: rank {worst[0]} takes {worst[1]:.2f}x the other ranks' median {metric} "
                "(TS301's score compares with the fastest rank)",
                style="bold " + colour_for(worst[1]),
            )
        elif len(ranks) > 1:
            text.append("no straggler: ranks are within 15% of each other", style="dim")
        else:
            text.append("one rank: nothing to compare", style="dim")
        text.append("\n\nscale: ", style="dim")
        for bound, colour in SCALE:
            label = f"≤{bound:.2f}x " if bound != float("inf") else "more"
            text.append("██", style=colour)
            text.append(f" {label} ", style="dim")
        self.update(text)
