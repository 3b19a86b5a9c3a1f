"""Numbers shown to people: one module of formatters, one spelling of NaN and Inf."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunescope.numbers import cell, compact, grouped, nonfinite, number


@pytest.mark.parametrize("fmt", [number, grouped, compact, cell], ids=lambda f: f.__name__)
def test_every_formatter_spells_the_non_finite_values_one_way(fmt):
    assert [fmt(v) for v in (math.nan, math.inf, -math.inf)] == ["NaN", "Inf", "-Inf"]
    assert fmt(np.float64("nan")) == "NaN"
    assert nonfinite(1.0) is None


def test_message_numbers_have_three_digits_and_an_exponent_only_at_the_ends():
    assert [number(x) for x in (2.5, 0.01234, 1234.5, 0.000123, 250000.0, 0.0)] == [
        *("2.5", "0.0123", "1.23e+03", "1.23e-04", "2.50e+05", "0"),
    ]
    assert number(np.float32(0.5)) == "0.5"


def test_counts_and_sizes_are_grouped_by_thousands():
    assert [grouped(x) for x in (1234567.0, 0.000123, 2.5, 18765, None)] == [
        *("1,234,567", "1.23e-04", "2.5", "18,765", "None"),
    ]


def test_axis_labels_are_short():
    assert [compact(x) for x in (12500.0, 3_100_000.0, 0.0001, 0.5)] == [
        *("12.5k", "3.1M", "1.0e-04", "0.5"),
    ]


def test_table_cells():
    assert cell(None) == "–" and cell(None, none="NULL") == "NULL"
    assert cell(2.0 / 3) == "0.6667" and cell(3e-5, ".2e") == "3.00e-05"
    assert cell(8) == "8" and cell("run-a") == "run-a"
