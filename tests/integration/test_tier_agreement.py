"""The fast tiers and the exact path give the same rows for any line, valid or broken.

A hypothesis fuzzer writes event lines (and lines broken the ways real logs
break: trailing commas, lowercase nan, invalid UTF-8, a null envelope field,
numbers out of range, lone surrogates, ...) between good lines, and reads the
file with each tier alone. A fast tier may decline a file (it then goes to the
next tier); when it accepts one, its rows must be the exact path's, and the
exact path must have found nothing to report.

The DuckDB tier is handed the keys of every line (its sample of a big file
usually misses a rare line), so that it has to catch each broken line itself.
"""

from __future__ import annotations

import json
import math
import os

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunescope.eventlog import LineError, loads
from tunescope.ingest.readers.native import arrow_tier as native_arrow
from tunescope.ingest.readers.native import duckdb_tier as native_duckdb
from tunescope.ingest.readers.native import reader as native
from tunescope.schema import METRIC_NAMES

GOOD = [b'{"v":1,"kind":"step","step":%d,"loss":1.5,"lr":0.001}\n' % s for s in range(1, 41)]

KEYS = [
    "v",
    "kind",
    "rank",
    "step",
    "ts",
    "run",
    "sample_ids",
    *METRIC_NAMES[:4],
    "aux",
    "reward",
    "file_index",
    "#q",
    "Loss",
    "",
    'qu"ote',
    "caf\u00e9",
]
numbers = st.one_of(
    st.integers(-3, 12),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 2.0, -0.0, 1e308, 1e-320, 1700000000.5, 2**53 + 1.0]),
)
texts = st.one_of(
    st.sampled_from(
        ["", "step", "2", "2.5", "NaN", "a,b", 'x"y', "\\", "}", "\u00e9", "\U0001f600"]
    ),
    st.text(max_size=6),
)
scalars = st.one_of(numbers, texts, st.booleans(), st.none())
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=2),
    max_leaves=6,
)


def mostly(usual, *rare):
    """``usual`` nine times in ten, else one of ``rare``."""
    return st.integers(0, 9).flatmap(lambda n: usual if n else st.one_of(*rare))


@st.composite
def event(draw) -> dict:
    obj: dict = {}
    if draw(st.booleans()):
        obj["v"] = draw(mostly(st.just(1), st.sampled_from([0, 2, None, True, 1.0, "1"])))
    obj["kind"] = draw(
        mostly(st.just("step"), st.sampled_from(["eval", "run_start", "run_end", "wobble", None]))
    )
    if draw(st.integers(0, 19)):
        obj["step"] = draw(mostly(st.integers(0, 50), numbers, st.sampled_from(["3", None, 2.0])))
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4, unique=True)):
        if key == "sample_ids":
            obj[key] = draw(mostly(st.lists(st.integers(-5, 2**70), max_size=3), values))
        elif key == "run":
            obj[key] = draw(mostly(texts, values))
        elif key == "ts":
            obj[key] = draw(mostly(st.floats(0, 1e10), numbers, scalars))
        elif key in ("v", "kind", "step", "rank"):
            obj[key] = draw(mostly(st.integers(0, 3), values))
        else:
            obj[key] = draw(mostly(numbers, scalars, values))
    return obj


def rarely(usual, *odd):
    """``usual`` (a value) 24 times in 25, else one of ``odd``."""
    return st.integers(0, 24).flatmap(lambda n: st.just(usual) if n else st.sampled_from(odd))


@st.composite
def spelled(draw, value) -> bytes:
    """``value`` as JSON text, spelled as writers spell it, or now and then
    broken the ways real logs break."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value).encode()
    if isinstance(value, float) and math.isnan(value):
        return draw(rarely(b"NaN", b"nan", b"-NaN", b"NAN"))
    if isinstance(value, float) and math.isinf(value):
        sign = b"-" if value < 0 else draw(rarely(b"", b"+"))
        return sign + draw(rarely(b"Infinity", b"inf", b"Inf", b"infinity"))
    if isinstance(value, int):
        return draw(rarely(str(value).encode(), b"%d.0" % value, b"%dE0" % value, b"-0"))
    if isinstance(value, float):
        return draw(rarely(repr(value).encode(), b"1e400", b"-1e400", b"1E5"))
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=draw(st.booleans())).encode()
        odd = draw(
            rarely(None, b"\xe9", b"\xc0\xaf", b"\xed\xa0\x80", b"\\ud800", b"\\udc00\\ud800")
        )
        if odd is None:
            return text
        at = draw(st.integers(1, len(text) - 1))
        return text[:at] + odd + text[at:]
    sep = draw(rarely(b",", b", ", b" ,"))
    if isinstance(value, list):
        items = [draw(spelled(v)) for v in value]
        open_, close = b"[", b"]"
    else:
        items = [
            draw(spelled(k)) + draw(rarely(b":", b" : ")) + draw(spelled(v))
            for k, v in value.items()
        ]
        open_, close = b"{", b"}"
    trailing = draw(rarely(b"", b",", b", ")) if items else b""
    return open_ + sep.join(items) + trailing + close


@st.composite
def line(draw) -> bytes:
    return draw(spelled(draw(event()))).replace(b"\n", b" ") + b"\n"


def _all_keys(chunk):
    """The keys of every step line that parses: what a perfect sample finds."""
    keys: set[str] = set()
    for raw in chunk.data.split(b"\n")[:-1]:
        try:
            obj = loads(raw)
        except LineError:
            continue
        if isinstance(obj, dict) and obj.get("kind") == "step":
            keys.update(obj)
    return keys


def _rows(result) -> list:
    """Every row as text; a zero is 0.0 whatever its sign (json reads ``-0``
    as the integer 0, Arrow as the float -0.0; the two are equal in SQL)."""
    out = []
    for name, table in (("s", result.steps), ("m", result.metrics), ("e", result.events)):
        for row in table.to_pylist():
            row = {k: 0.0 if v == 0 and isinstance(v, float) else v for k, v in row.items()}
            out.append(repr((name, sorted(row.items(), key=lambda kv: kv[0]))))
    return sorted(out)


def check_tiers_agree(tmp_path, body: bytes) -> None:
    path = tmp_path / "r" / "events" / "rank-0.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    chunk = native.read_new_lines(path, None)
    exact = native.read_exact(path, chunk)
    # A clean file read in the same part (small files are joined for DuckDB):
    # its rows must not move, nor those of the file under test.
    sibling = tmp_path / "s" / "events" / "rank-0.jsonl"
    sibling.parent.mkdir(parents=True, exist_ok=True)
    sibling.write_bytes(b"".join(GOOD[:7]))
    sib_chunk = native.read_new_lines(sibling, None)
    sib_exact = native.read_exact(sibling, sib_chunk)
    for tier, read in (("duckdb", native_duckdb.read_part), ("arrow", native_arrow.read_chunks)):
        for got in (read([(0, path, chunk)]), read([(1, sibling, sib_chunk), (0, path, chunk)])):
            if 1 in got:
                assert _rows(got[1]) == _rows(sib_exact), (tier, body)
            if 0 not in got:
                continue  # declined: the next tier decides
            assert exact.problems == [], (tier, body, exact.problems)
            assert _rows(got[0]) == _rows(exact), (tier, body)


# A few seconds in CI; set TUNESCOPE_FUZZ_EXAMPLES=5000 for a longer hunt.
FUZZ_EXAMPLES = int(os.environ.get("TUNESCOPE_FUZZ_EXAMPLES", "60"))


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(line(), min_size=1, max_size=2), st.integers(0, len(GOOD)))
def test_tiers_agree_on_generated_lines(tmp_path_factory, monkeypatch_keys, lines, at):
    body = b"".join(GOOD[:at] + lines + GOOD[at:])
    check_tiers_agree(tmp_path_factory.mktemp("fz"), body)


@pytest.fixture(scope="module")
def monkeypatch_keys():
    mp = pytest.MonkeyPatch()
    mp.setattr(native_duckdb, "sample_step_keys", _all_keys)
    yield mp
    mp.undo()


# The kinds of line the fast and exact paths once judged differently.
ONCE_APART = {
    "trailing_comma": b'{"v":1,"kind":"step","step":2,"loss":1.0,}\n',
    "trailing_comma_spaced": b'{"v":1,"kind":"step","step":2,"loss":1.0 , }\n',
    "nan_lower": b'{"v":1,"kind":"step","step":2,"loss":nan}\n',
    "inf_lower": b'{"v":1,"kind":"step","step":2,"loss":-inf}\n',
    "latin1": b'{"v":1,"kind":"step","step":2,"loss":1.0,"run":"caf\xe9"}\n',
    "overlong": b'{"v":1,"kind":"step","step":2,"loss":1.0,"run":"\xc0\xaf"}\n',
    "encoded_surrogate": b'{"v":1,"kind":"step","step":2,"loss":1.0,"run":"\xed\xa0\x80"}\n',
    "v_null": b'{"v":null,"kind":"step","step":2,"loss":1.0}\n',
    "sample_ids_1e400": b'{"v":1,"kind":"step","step":2,"loss":1.0,"sample_ids":[1e400]}\n',
    "deep_surrogate_pair": b'{"v":1,"kind":"step","step":2,"loss":1.0,"x":'
    + b"[" * 350
    + b'"\\ud83d\\ude00"'
    + b"]" * 350
    + b"}\n",
    "deep_lone_surrogate": b'{"v":1,"kind":"step","step":2,"loss":1.0,"x":'
    + b'{"a":' * 350
    + b'"\\ud83d"'
    + b"}" * 350
    + b"}\n",
}


@pytest.mark.parametrize("name", list(ONCE_APART))
@pytest.mark.parametrize("sampled", [True, False], ids=["sampled", "missed"])
def test_tiers_agree_on_lines_once_judged_apart(tmp_path, monkeypatch, name, sampled):
    if sampled:
        monkeypatch.setattr(native_duckdb, "sample_step_keys", _all_keys)
    good = [b'{"v":1,"kind":"step","step":%d,"loss":1.5}\n' % s for s in range(10, 3010)]
    body = b"".join([*good[:1500], ONCE_APART[name], *good[1500:]])
    assert len(body) > native.FAST_PATH_MIN_BYTES
    check_tiers_agree(tmp_path, body)


def test_the_comparison_sees_a_difference(tmp_path, monkeypatch):
    """The check above would catch a tier that read a line its own way."""
    real = native.read_exact

    def off_by_one(path, chunk):
        result = real(path, chunk)
        steps = result.steps.set_column(
            1, "step", pa.array([s + 1 for s in result.steps["step"].to_pylist()], pa.int64())
        )
        result.steps = steps
        return result

    monkeypatch.setattr(native, "read_exact", off_by_one)
    with pytest.raises(AssertionError):
        check_tiers_agree(tmp_path, b"".join(GOOD))
    assert math.isfinite(1.0)


@pytest.mark.parametrize(
    "line",
    [
        b'{"kind":"step","step":0,"sample_ids":0,"loss":0,"ts":0}\n',  # a bare number, not a list
        b'{"kind":"step","step":1,"sample_ids":[3,4],"loss":1.5,"ts":1}\n',
        b'{"kind":"step","step":2,"sample_ids":"a","loss":1.5,"ts":2}\n',
    ],
    ids=["number", "list", "text"],
)
def test_tiers_agree_on_sample_ids_of_any_shape(tmp_path, line):
    check_tiers_agree(tmp_path, line)
