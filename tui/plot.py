"""A small curve widget drawn with braille dots.

It draws the min/max buckets of :func:`tunescope.tui.queries.bucket_series`
as one vertical dot span per dot column, so every spike survives. The widget
only maps buckets to dots (it runs no query): a terminal cell holds 2 x 4
braille dots, so a plot 60 cells wide and 6 tall has 120 x 24 dots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget

from tunescope.numbers import compact
from tunescope.report.curves import Series
from tunescope.tui.colours import SEVERITY_COLOURS

# Colours for series, in order; chosen to stay apart on dark and light themes.
PALETTE = (
    "#4ea1ff",
    "#ffb000",
    "#3ccf91",
    "#ff6b8b",
    "#b48cff",
    "#00c2c7",
    "#e0e060",
    "#ff8f40",
)

# Braille dot bits: _DOTS[row][col] for the 4 x 2 dots of one cell.
_DOTS = np.array([[0x01, 0x08], [0x02, 0x10], [0x04, 0x20], [0x40, 0x80]], dtype=np.uint8)

Y_AXIS = 9  # cells for the y labels and the axis line


@dataclass
class Marker:
    """A finding's step range, drawn as a tint and a mark on the x axis."""

    start: float
    end: float
    severity: str
    label: str = ""
    selected: bool = False


@dataclass
class _Frame:
    """What the last render computed (kept for tests and hit-testing)."""

    x_range: tuple[float, float] = (0.0, 1.0)
    y_range: tuple[float, float] = (0.0, 1.0)
    lines: list[Strip] = field(default_factory=list)


class Plot(Widget):
    """A titled braille curve plot with a y axis, an x axis and finding markers.

    Data arrives through :meth:`set_series` (from a screen's message handler);
    :attr:`buckets` tells the owning screen how many buckets to ask for.
    """

    def __init__(
        self,
        title: str,
        *,
        log_y: bool = False,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self.log_y = log_y
        self.series: list[Series] = []
        self.markers: list[Marker] = []
        self.x_range: tuple[float, float] | None = None
        self.note = ""
        self.loaded = False
        self.frame = _Frame()
        self._cache_key: tuple[Any, ...] | None = None

    # ---- data ---------------------------------------------------------------

    @property
    def buckets(self) -> int:
        """Dot columns of the canvas: the bucket count a query should return."""
        return max(2, (self.size.width - Y_AXIS) * 2) if self.size.width else 160

    def set_series(self, series: list[Series], x_range: tuple[float, float] | None) -> None:
        self.series = series
        self.x_range = x_range
        self.loaded = True
        self._invalidate()

    def set_markers(self, markers: list[Marker]) -> None:
        self.markers = markers
        self._invalidate()

    def set_log(self, log_y: bool) -> None:
        self.log_y = log_y
        self._invalidate()

    def set_note(self, note: str) -> None:
        self.note = note
        self._invalidate()

    def _invalidate(self) -> None:
        self._cache_key = None
        self.refresh()

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return 8

    # ---- rendering ----------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width, height = self.size.width, self.size.height
        key = (width, height)
        if self._cache_key != key:
            self.frame.lines = self._draw(width, height)
            self._cache_key = key
        lines = self.frame.lines
        return lines[y] if y < len(lines) else Strip.blank(width)

    def _draw(self, width: int, height: int) -> list[Strip]:
        base = self.rich_style
        dim = base + Style(dim=True)
        rows = max(1, height - 3)  # one title row, the axis line (finding marks), its labels
        cols = max(1, width - Y_AXIS)
        out = [self._title_line(width)]
        finite = [s for s in self.series if len(s)]
        if not finite or width <= Y_AXIS + 2 or height < 3:
            msg = "loading…" if not self.loaded else "no data"
            for r in range(rows):
                text = msg.center(width) if r == rows // 2 else ""
                out.append(Strip([Segment(text, dim)]).adjust_cell_length(width, base))
            out.append(Strip.blank(width, base))
            out.append(Strip.blank(width, base))
            return out
        ys = [(self._transform(s.lo), self._transform(s.hi)) for s in finite]
        self.frame.x_range = self._x_range(finite)
        self.frame.y_range = self._y_range(ys)
        dots = self._dots(finite, ys, rows, cols)
        tint, marks = self._tints(cols)
        out.extend(self._plot_lines(finite, dots, tint, rows, cols, width))
        out.extend(self._x_axis(marks, cols, width))
        return out

    def _title_line(self, width: int) -> Strip:
        """The title, then a legend entry per series and the note, as fit."""
        base = self.rich_style
        head = [Segment(f" {self.title}", base + Style(bold=True))]
        used = len(self.title) + 1
        for s in self.series:
            text = f"  ● {s.label}"
            if used + len(text) > width:
                break
            head.append(Segment(text, base + Style(color=s.colour)))
            used += len(text)
        if self.note and used + len(self.note) + 2 <= width:
            head.append(Segment("  " + self.note, base + Style(dim=True)))
        return Strip(head).adjust_cell_length(width, base)

    def _x_range(self, finite: list[Series]) -> tuple[float, float]:
        xlo, xhi = self.x_range or (
            float(min(s.x.min() for s in finite)),
            float(max(s.x.max() for s in finite)),
        )
        return (xlo, xhi) if xhi > xlo else (xlo, xlo + 1.0)

    def _y_range(self, ys: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
        """The value range of every series (in the plot's scale), padded."""
        allv = np.concatenate([np.concatenate([lo, hi]) for lo, hi in ys])
        allv = allv[np.isfinite(allv)]
        if allv.size:
            ylo, yhi = float(allv.min()), float(allv.max())
        else:
            ylo, yhi = 0.0, 1.0
        if yhi - ylo < 1e-12 * max(1.0, abs(yhi)):
            pad = abs(yhi) * 0.05 or 0.5
            return ylo - pad, yhi + pad
        pad = (yhi - ylo) * 0.04
        # Values that never go negative get no axis below zero.
        lower = ylo - pad
        if ylo >= 0 and not self.log_y:
            lower = max(lower, 0.0)
        return lower, yhi + pad

    def _dots(
        self,
        finite: list[Series],
        ys: list[tuple[np.ndarray, np.ndarray]],
        rows: int,
        cols: int,
    ) -> _Dots:
        """Every series as braille dots: per cell, the dot bits and the series
        that drew last; and the columns holding NaN or Inf values."""
        (xlo, xhi), (ylo, yhi) = self.frame.x_range, self.frame.y_range
        pw, ph = cols * 2, rows * 4
        dots = _Dots(
            bits=np.zeros((rows, cols), dtype=np.uint8),
            owner=np.full((rows, cols), -1, dtype=np.int16),
            bad_cols=np.zeros(cols, dtype=bool),
        )

        def to_py(v: np.ndarray) -> np.ndarray:
            p = (yhi - v) / (yhi - ylo) * (ph - 1)
            return np.clip(np.rint(np.nan_to_num(p, nan=-1.0)), -1, ph).astype(np.int64)

        for idx, (s, (lo, hi)) in enumerate(zip(finite, ys, strict=True)):
            px = np.rint((s.x - xlo) / (xhi - xlo) * (pw - 1)).astype(np.int64)
            inside = (px >= 0) & (px < pw)
            dots.bad_cols[np.clip(px[(s.bad > 0) & inside] // 2, 0, cols - 1)] = True
            ok = np.isfinite(lo) & np.isfinite(hi)
            px, plo, phi = px[ok], to_py(hi)[ok], to_py(lo)[ok]  # screen y grows downwards
            for x, top, bot in zip(*_spans(px, plo, phi), strict=True):
                if not 0 <= x < pw:
                    continue
                top, bot = max(top, 0), min(bot, ph - 1)
                if top > bot:
                    continue
                c, dc = divmod(x, 2)
                for py in range(top, bot + 1):
                    r, dr = divmod(py, 4)
                    dots.bits[r, c] |= _DOTS[dr, dc]
                    dots.owner[r, c] = idx
        return dots

    def _tints(self, cols: int) -> tuple[np.ndarray, list[tuple[int, int, Marker]]]:
        """Finding ranges: the tint level of each column they cover (-1: none;
        +10 for the selected one), and each marker's first and last column."""
        (xlo, xhi), pw = self.frame.x_range, cols * 2
        tint = np.full(cols, -1, dtype=np.int16)
        levels = {"info": 0, "warning": 1, "error": 2}
        marks: list[tuple[int, int, Marker]] = []
        for m in self.markers:
            c0 = math.floor((m.start - xlo) / (xhi - xlo) * (pw - 1)) // 2
            c1 = math.ceil((m.end - xlo) / (xhi - xlo) * (pw - 1)) // 2
            if c1 < 0 or c0 >= cols:
                continue
            c0, c1 = max(c0, 0), min(c1, cols - 1)
            marks.append((c0, c1, m))
            lvl = levels.get(m.severity, 0) + (10 if m.selected else 0)
            tint[c0 : c1 + 1] = np.maximum(tint[c0 : c1 + 1], lvl)
        return tint, marks

    def _plot_lines(
        self,
        finite: list[Series],
        dots: _Dots,
        tint: np.ndarray,
        rows: int,
        cols: int,
        width: int,
    ) -> list[Strip]:
        """The plot's rows: a y label and the axis line, then the dots, each
        cell in its series' colour over its column's tint."""
        base = self.rich_style
        dim = base + Style(dim=True)
        ylo, yhi = self.frame.y_range
        tint_styles = {}
        for lvl in set(tint.tolist()):
            if lvl < 0:
                continue
            sev = ("info", "warning", "error")[lvl % 10]
            tint_styles[lvl] = Style(
                bgcolor=_blend(SEVERITY_COLOURS[sev], 0.28 if lvl >= 10 else 0.14)
            )

        labels = {0: compact(self._inverse(yhi)), rows - 1: compact(self._inverse(ylo))}
        if rows >= 5:
            labels[rows // 2] = compact(self._inverse(yhi - (yhi - ylo) * (rows // 2 + 0.5) / rows))
        colour_styles = [Style(color=s.colour) for s in finite]
        bad_style = Style(color=SEVERITY_COLOURS["error"], bold=True)
        out = []
        for r in range(rows):
            label = labels.get(r, "")
            segs = [Segment(label.rjust(Y_AXIS - 1)[: Y_AXIS - 1] + "│", dim)]
            run_text: list[str] = []
            run_style: Style | None = None
            for c in range(cols):
                b = int(dots.bits[r, c])
                if r == 0 and dots.bad_cols[c]:
                    ch, st = "×", bad_style
                elif b:
                    ch, st = chr(0x2800 + b), colour_styles[int(dots.owner[r, c])]
                else:
                    ch, st = " ", None
                t = int(tint[c])
                if t >= 0:
                    st = (st or Style()) + tint_styles[t]
                style = base + st if st is not None else base
                if style is not run_style and style != run_style:
                    if run_text:
                        segs.append(Segment("".join(run_text), run_style))
                    run_text, run_style = [], style
                run_text.append(ch)
            if run_text:
                segs.append(Segment("".join(run_text), run_style))
            out.append(Strip(segs).adjust_cell_length(width, base))
        return out

    def _x_axis(
        self, marks: list[tuple[int, int, Marker]], cols: int, width: int
    ) -> tuple[Strip, Strip]:
        """The x axis: its line with a mark under each finding, then the step
        labels on a row of their own (a mark never hides them): the first and
        last step shown, and the middle one where it fits."""
        base = self.rich_style
        dim = base + Style(dim=True)
        xlo, xhi = self.frame.x_range
        line = [Segment(" " * (Y_AXIS - 1) + "└", dim)]
        axis = ["─"] * cols
        axis_styles: list[Style] = [dim] * cols
        for c0, c1, m in marks:
            st = base + Style(color=SEVERITY_COLOURS.get(m.severity, "#ffffff"), bold=m.selected)
            for c in range(c0, c1 + 1):
                axis[c] = "▲" if c == c0 else "━"
                axis_styles[c] = st
        for ch, st in zip(axis, axis_styles, strict=True):
            line.append(Segment(ch, st))
        labels = [" "] * cols
        left, right = step_label(xlo), step_label(xhi)
        mid = step_label(float(round((xlo + xhi) / 2)))
        free = cols - len(left) - len(right)
        if free >= len(mid) + 4 and mid not in (left, right):
            at = (cols - len(mid)) // 2
            labels[at : at + len(mid)] = mid
        labels[: min(len(left), cols)] = left[:cols]
        shown = right[-cols:]
        labels[cols - len(shown) :] = shown
        text = Segment(" " * Y_AXIS + "".join(labels), dim)
        return (
            Strip(Strip(line).simplify()).adjust_cell_length(width, base),
            Strip([text]).adjust_cell_length(width, base),
        )

    def _transform(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        if not self.log_y:
            return v
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)

    def _inverse(self, v: float) -> float:
        return 10.0**v if self.log_y else v


@dataclass
class _Dots:
    """The braille dots of one render: bits per cell, the series that owns
    each cell, and the columns that hold NaN or Inf values."""

    bits: np.ndarray
    owner: np.ndarray
    bad_cols: np.ndarray


def _spans(
    px: np.ndarray, plo: np.ndarray, phi: np.ndarray
) -> tuple[list[int], list[int], list[int]]:
    """The vertical dot span (x, top, bottom) of each bucket of one series.
    Consecutive buckets are connected: each column spans its own range and
    reaches halfway to its neighbours, which draws a continuous line; the
    columns between sparse points are interpolated."""
    span_top: list[int] = []
    span_bot: list[int] = []
    span_x: list[int] = []
    for i in range(len(px)):
        top, bot = int(plo[i]), int(phi[i])
        if i > 0:
            gap = int(px[i] - px[i - 1])
            prev_mid = (plo[i - 1] + phi[i - 1]) / 2
            mid = (plo[i] + phi[i]) / 2
            if gap > 1:
                for g in range(1, gap):
                    t = g / gap
                    y0 = prev_mid + (mid - prev_mid) * (g - 0.5) / gap
                    y1 = prev_mid + (mid - prev_mid) * t
                    span_x.append(int(px[i - 1]) + g)
                    span_top.append(round(min(y0, y1)))
                    span_bot.append(round(max(y0, y1)))
                join = prev_mid + (mid - prev_mid) * (gap - 0.5) / gap
            else:
                join = (prev_mid + mid) / 2
            top, bot = min(top, round(join)), max(bot, round(join))
        span_x.append(int(px[i]))
        span_top.append(top)
        span_bot.append(bot)
    return span_x, span_top, span_bot


def step_label(x: float) -> str:
    """A step on the x axis: whole steps in full (``5800``, the run's real last
    step), others as :func:`~tunescope.numbers.compact` numbers."""
    if math.isfinite(x) and x == int(x) and abs(x) < 1e7:
        return str(int(x))
    return compact(x)


def _blend(hex_colour: str, alpha: float) -> str:
    """``hex_colour`` at ``alpha`` over a dark background (a tint that keeps dots readable)."""
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    bg = (0x12, 0x12, 0x16)
    mix = [round(c * alpha + d * (1 - alpha)) for c, d in zip((r, g, b), bg, strict=True)]
    return "#{:02x}{:02x}{:02x}".format(*mix)
