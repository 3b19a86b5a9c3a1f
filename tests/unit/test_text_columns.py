"""text_columns: lines laid out like a template line are read as columns;
every other line is handed back, whole, to be read one by one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunescope.ingest.readers.text_columns import Layout, Slot


def layout(line: bytes, values: list[bytes], pivots: bytes, **kw) -> Layout:
    """A layout over ``line`` whose slots are the first occurrences of ``values``
    after each other (and after the free prefix)."""
    slots = []
    at = kw.get("free", 0)
    for v in values:
        start = line.index(v, at)
        slots.append(Slot(start, start + len(v), count=kw.pop(f"count{len(slots)}", False)))
        at = start + len(v)
    return Layout(line, slots, pivots, **kw)


def lines_of(data: bytes, spans: list[tuple[int, int]]) -> list[bytes]:
    return [line for a, b in spans for line in data[a:b].splitlines()]


TEMPLATE = b"2024-05-01 12:00:01,001 - INFO - rollout=1 loss=2.5 lr=1e-05 time=12.5ms"


def home_made() -> Layout:
    free = TEMPLATE.index(b"rollout")
    return layout(TEMPLATE, [b"1", b"2.5", b"1e-05", b"12.5"], b"=", free=free)


def test_lines_like_the_template_become_columns_and_the_rest_is_handed_back():
    data = (
        b"starting\n"
        + b"2024-05-01 12:00:02,117 - INFO - rollout=2 loss=2.25 lr=1e-05 time=13ms\n"
        + b"2024-05-01 12:00:03,250 - INFO - rollout=3 loss=nan lr=2E-5 time=.5ms\n"
        + b"2024-05-01 12:00:04,250 - INFO - rollout=4 loss=2.0 lr=1e-05 time=12.5s\n"
        + b"2024-05-01 12:00:05,250 - WARN - rollout=5 loss=2.0 lr=1e-05 time=12.5ms\n"
        + b"2024-05-01 12:00:06,250 - INFO - rollout=6 loss=abc lr=1e-05 time=12.5ms\n"
        + b"2024-05-01 12:00:07,250 - INFO - rollout=7 loss=1.5 lr=1e-05 time=12.5ms\n"
    )
    got = home_made().read(data)
    assert got is not None
    starts = [int(s) for s in got.starts]
    assert [data[s : data.index(b"\n", s)].split(b"rollout=")[1][:1] for s in starts] == [
        b"2",
        b"3",
        b"7",
    ]
    step, loss, lr, ms = (v.tolist() for v in got.values)
    assert step == [2.0, 3.0, 7.0]
    assert loss[0] == 2.25 and math.isnan(loss[1]) and loss[2] == 1.5
    assert lr == [1e-05, 2e-05, 1e-05]
    assert ms == [13.0, 0.5, 12.5]
    # the unit differs, the level differs, a value is a word: each line handed back whole
    left = lines_of(data, got.other)
    assert left[0] == b"starting"
    assert [line.split(b"rollout=")[1][:1] for line in left[1:]] == [b"4", b"5", b"6"]


def test_values_are_what_python_reads_from_the_same_text():
    texts = [b"0", b"-0", b"+1.5", b"1.", b".25", b"1e400", b"4.9e-324", b"123456789.123456789"]
    data = b"".join(b"x=%d y=%s\n" % (i, t) for i, t in enumerate(texts))
    got = layout(b"x=0 y=0", [b"0", b"0"], b"=").read(data)
    assert got is not None and len(got.starts) == len(texts)
    assert [repr(v) for v in got.values[1].tolist()] == [repr(float(t)) for t in texts]


def test_a_prefix_may_differ_in_its_digits_only():
    data = (
        b"[rank0] 12:00:01 step: 1, loss: 2.0\n"
        b"[rank7] 23:59:59 step: 2, loss: 1.9\n"
        b"[rank0] 12:0a:01 step: 3, loss: 1.8\n"
        b"[rank0] 12:00:01 Step: 4, loss: 1.7\n"
    )
    line = b"[rank0] 12:00:01 step: 1, loss: 2.0"
    got = layout(line, [b"1", b"2.0"], b" ", free=line.index(b"step")).read(data)
    assert got is not None
    assert got.values[0].tolist() == [1.0, 2.0]
    assert len(lines_of(data, got.other)) == 2


def test_padded_values_and_counts():
    line = b" iteration        1/     100 | lm loss: 3.0E+00 |"
    slots = [
        Slot(line.index(b"1/"), line.index(b"1/") + 1, count=True, spaced=True),
        Slot(line.index(b"100"), line.index(b"100") + 3, count=True),
        Slot(line.index(b"3.0E"), line.index(b"3.0E") + 7),
    ]
    lay = Layout(line, slots, b":/", trim=True)
    data = (
        b" iteration       12/     100 | lm loss:   2.5E+00 |\n"
        b" iteration      +13/     100 | lm loss: 2.4E+00 |\n"  # a sign: not \\d+
        b" iteration14/     100 | lm loss: 2.4E+00 |\n"  # no space before the count
        b" iteration       15/   100.0 | lm loss: 2.4E+00 |\n"  # a total that is no count
        b" iteration       16/ 99999999999999999999 | lm loss: 2.4E+00 |\n"  # beyond int64
        b" iteration       17/     100 | lm loss:   nan |\n"
    )
    got = lay.read(data)
    assert got is not None
    assert got.values[0].dtype == np.int64
    assert got.values[0].tolist() == [12, 17]
    assert got.values[1].tolist() == [100, 100]
    assert got.values[2][0] == 2.5 and math.isnan(got.values[2][1])
    assert len(lines_of(data, got.other)) == 4


def test_only_the_spellings_of_nan_and_inf_the_caller_reads():
    data = b"a=1 b=nan\na=2 b=NaN\na=3 b=nAn\na=4 b=-inf\na=5 b=INFINITY\n"
    words = frozenset({"nan", "NaN", "inf"})
    got = layout(b"a=1 b=2", [b"1", b"2"], b"=", words=words).read(data)
    assert got is not None
    assert got.values[0].tolist() == [1.0, 2.0, 4.0]
    assert [line[:3] for line in lines_of(data, got.other)] == [b"a=3", b"a=5"]


def test_thousands_separators_when_the_grammar_has_them():
    data = b"a=1 b=1,004.5\na=2 b=12,34\na=3 b=7\n"
    plain = layout(b"a=1 b=2", [b"1", b"2"], b"=").read(data)
    grouped = layout(b"a=1 b=2", [b"1", b"2"], b"=", grouped=True).read(data)
    assert plain is not None and grouped is not None
    assert plain.values[1].tolist() == [7.0]
    assert grouped.values[1].tolist() == [1004.5, 7.0]
    assert lines_of(data, grouped.other) == [b"a=2 b=12,34"]


def test_binary_garbage_and_torn_lines_are_handed_back():
    data = b"a=1 b=2\n\x00\xff=\x80 b=\xfe\xfd\na=\n=\n\n\na=3 b=4\n"
    got = layout(b"a=1 b=2", [b"1", b"2"], b"=").read(data)
    assert got is not None
    assert got.values[0].tolist() == [1.0, 3.0]
    assert b"".join(data[a:b] for a, b in got.other) == data[8 : data.index(b"a=3")]


@pytest.mark.parametrize(
    ("line", "values", "pivots"),
    [
        (b"loss 1.5/2.0 end", [b"1.5", b"2.0"], b" "),  # two values between two pivots
        (b"a=1 b=2", [b"2", b"1"], b"="),  # values out of order
    ],
)
def test_a_template_that_cannot_cut_lines_reads_nothing(line, values, pivots):
    slots = [Slot(line.rindex(v), line.rindex(v) + len(v)) for v in values]
    assert Layout(line, slots, pivots).read(line + b"\n") is None


def test_a_read_a_block_at_a_time_is_the_same_read():
    lines = [b"step=%d loss=%d.5 lr=1e-05\n" % (s, s) for s in range(200)]
    lines[7] = b"a line of another kind\n"
    lines[8] = b"step=8 loss=oops lr=1e-05\n"
    lines[150] = b"step=150 loss=" + b"9" * 400 + b" lr=1e-05\n"  # longer than a block
    data = b"".join(lines)
    lay = layout(b"step=0 loss=0.5 lr=1e-05", [b"0", b"0.5", b"1e-05"], b"=")
    whole = lay.read(data)
    assert whole is not None
    for block in (64, 100, 333):
        got = lay.read(data, block=block)
        assert got is not None
        assert got.starts.tolist() == whole.starts.tolist()
        assert [v.tolist() for v in got.values] == [v.tolist() for v in whole.values]
        assert got.other == whole.other == [(sum(map(len, lines[:7])), sum(map(len, lines[:9])))]
