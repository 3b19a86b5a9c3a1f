"""Numbers as people read them, in messages, tables and axis labels.

One spelling for the values that are not finite everywhere a number is shown
to a person: ``NaN``, ``Inf`` and ``-Inf``. (Data written for programs, JSON
and CSV, keeps the event schema's tokens ``NaN``, ``Infinity`` and
``-Infinity``: see :func:`tunescope.findings.jsonable`.)
"""

from __future__ import annotations

import math
from typing import Any


def nonfinite(x: float) -> str | None:
    """``NaN``, ``Inf`` or ``-Inf`` for a value that is not finite; None for one that is."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Inf" if x > 0 else "-Inf"
    return None


def number(x: float, digits: int = 3) -> str:
    """A number for a message: ``digits`` significant digits (``0.0123``,
    ``1.23e+03``), below 0.001 and from 100,000 on with a fixed-width
    exponent (``1.23e-04``, ``2.50e+05``)."""
    x = float(x)
    special = nonfinite(x)
    if special is not None:
        return special
    a = abs(x)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def grouped(x: float | None, digits: int = 3) -> str:
    """A count or a size for a message: thousands separated (``18,765``),
    ``digits`` significant digits below 1,000; ``None`` when there is none."""
    if x is None:
        return "None"
    x = float(x)
    special = nonfinite(x)
    if special is not None:
        return special
    a = abs(x)
    if a != 0 and (a < 1e-3 or a >= 1e13):
        return f"{x:.{digits - 1}e}"
    if a >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def compact(x: float | None) -> str:
    """A short number for an axis label: 3 significant digits, ``k`` and ``M``
    for the large (``12.5k``, ``3.1M``)."""
    if x is None:
        return "None"
    special = nonfinite(x)
    if special is not None:
        return special
    a = abs(x)
    if a >= 1e6:
        return f"{x / 1e6:.3g}M"
    if a >= 1e4:
        return f"{x / 1e3:.3g}k"
    if a != 0 and a < 1e-3:
        return f"{x:.1e}"
    return f"{x:.3g}"


def cell(value: Any, spec: str = ".4g", none: str = "–") -> str:
    """A value in a table or a status line: a float in ``spec``, ``none`` for
    a missing value, anything else as its text."""
    if value is None:
        return none
    if isinstance(value, float):
        return nonfinite(value) or format(value, spec)
    return str(value)
