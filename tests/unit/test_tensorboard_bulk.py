"""The TensorBoard reader decodes records in bulk (numpy over the record
offsets); a plain per-record decode, written here from the format, must read
every generated file the same way: framing, damage, tensors, text, plugins,
twins, times out of range."""

from __future__ import annotations

import math
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from tunescope.eventlog import epoch_seconds, time_problem
from tunescope.ingest.readers.protobuf import masked_crc32c
from tunescope.ingest.readers.tensorboard import (
    FINAL_TAGS,
    MAX_RECORD,
    TensorBoardReader,
    _hf_args,
    _Scan,
    add_scalar,
    iter_records,
    parse_event,
    read_scalars,
    twin,
)
from tunescope.ingest.rows import Problem

# ---- writing records by hand --------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def fld(num: int, wire: int, payload: bytes) -> bytes:
    key = varint(num << 3 | wire)
    return key + (varint(len(payload)) + payload if wire == 2 else payload)


def event(wall: float | None, step: int | None, values: list[bytes], extra: bytes = b"") -> bytes:
    body = b"" if wall is None else fld(1, 1, struct.pack("<d", wall))
    body += b"" if step is None else fld(2, 0, varint(step))
    body += extra
    if values:
        body += fld(5, 2, b"".join(fld(1, 2, v) for v in values))
    return body


def simple(tag: str, x: float) -> bytes:
    return fld(1, 2, tag.encode()) + fld(2, 5, struct.pack("<f", x))


def tensor(tag: str, proto: bytes, plugin: str = "scalars") -> bytes:
    meta = fld(1, 2, fld(1, 2, plugin.encode()))
    return fld(1, 2, tag.encode()) + fld(8, 2, proto) + fld(9, 2, meta)


def record(body: bytes) -> bytes:
    head = struct.pack("<Q", len(body))
    return (
        head
        + struct.pack("<I", masked_crc32c(head))
        + body
        + struct.pack("<I", masked_crc32c(body))
    )


TAGS = [
    "train/loss",
    "loss",  # the same canonical metric as train/loss: the last write wins
    "train/learning_rate",
    "train/grad_norm",
    "eval/loss",
    "lm loss vs samples",  # a twin: left out
    "lm loss",
    "custom/reward",
    "train/train_loss",  # a final summary tag: the run's end
    "weights",  # marked a histogram part-way through
    "",
    "x" * 200,  # a two-byte tag length
    "t\u00e9\u00e0",
]


def mixed_file(seed: int, undecodable: bool = True) -> tuple[bytes, list[int]]:
    """Records of every kind in random order; returns the bytes and the
    offsets of records whose data bytes were then damaged (data CRC)."""
    rng = random.Random(seed)
    out = bytearray(record(fld(3, 2, b"brain.Event:2") + fld(1, 1, struct.pack("<d", 1.7e9))))
    data_damaged = []
    step = 0
    for _ in range(600):
        step += rng.choice([0, 1, 1, 1, 5, 200, 20000])
        wall: float | None = 1.7e9 + step * 0.5
        r = rng.random()
        if r < 0.03:
            wall = rng.choice([1.7e12, float("nan"), -1.0, float("inf"), None])
        tag = rng.choice(TAGS)
        x = rng.choice([rng.uniform(-5, 5), float("nan"), float("inf"), 0.0])
        kind = rng.random()
        s: int | None = step
        if kind < 0.02:
            s = None  # step 0 is not written
        elif kind < 0.04:
            s = -rng.randint(1, 10)
        if kind < 0.6 or kind >= 0.97:
            body = event(wall, s, [simple(tag, x)])
        elif kind < 0.68:
            proto = fld(1, 0, varint(1)) + fld(5, 2, struct.pack("<f", x))
            body = event(wall, s, [tensor(tag, proto)])
        elif kind < 0.74:
            proto = fld(1, 0, varint(2)) + fld(6, 2, struct.pack("<d", x))
            body = event(wall, s, [tensor(tag, proto)])
        elif kind < 0.78:
            proto = fld(1, 0, varint(1)) + fld(4, 2, struct.pack("<f", x))
            body = event(wall, s, [tensor(tag, proto)])
        elif kind < 0.80:
            proto = fld(1, 0, varint(9)) + fld(10, 2, varint(rng.randint(-9, 9)))
            body = event(wall, s, [tensor(tag, proto)])
        elif kind < 0.83:  # two values in one event
            body = event(wall, s, [simple(tag, x), simple(rng.choice(TAGS), -x)])
        elif kind < 0.85:
            proto = fld(8, 2, b'{"logging_steps": 5, "max_steps": 900}')
            body = event(wall, s, [tensor("args/text_summary", proto, "text")])
        elif kind < 0.87:
            body = event(wall, s, [tensor("weights", b"", "histograms")])
        elif kind < 0.90:  # fields in another order
            body = event(None, s, [simple(tag, x)]) + fld(1, 1, struct.pack("<d", wall or 0.0))
        elif kind < 0.92 and undecodable:
            body = event(wall, s, []) + b"\x0b"  # wire type 3: not decodable
        elif kind < 0.95:
            body = event(wall, s, [fld(2, 5, struct.pack("<f", x)) + fld(1, 2, tag.encode())])
        elif kind < 0.96:  # the common layout's lengths, another field than simple_value
            body = event(wall, s, [fld(1, 2, tag.encode()) + fld(4, 5, struct.pack("<f", x))])
        else:
            body = event(wall, s, [simple(tag, x)], extra=fld(4, 2, b"\x08\x01"))
        rec = bytearray(record(body))
        if rng.random() < 0.01:
            rec[5] ^= 0x40  # the header: damage that the next header ends
        elif rng.random() < 0.01:
            rec[14] ^= 0x01  # the data: caught with verify only
            data_damaged.append(len(out))
        out += rec
    out += b"\x00\x01garbage" * rng.randint(0, 3)
    out += record(event(1.7e9, step + 1, [simple("train/loss", 1.0)]))
    out += record(event(1.7e9, step + 2, [simple("train/loss", 2.0)]))[:-3]  # cut short
    return bytes(out), data_damaged


# ---- the plain per-record reference ---------------------------------------------------


def ref_records(data: bytes, verify: bool) -> tuple[list[Any], int]:
    items = []
    pos = consumed = 0
    n = len(data)
    while pos + 12 <= n:
        length, crc = struct.unpack_from("<QI", data, pos)
        if masked_crc32c(data[pos : pos + 8]) != crc:
            nxt = pos + 1
            while nxt + 12 <= n:
                ln, c = struct.unpack_from("<QI", data, nxt)
                if ln <= MAX_RECORD and masked_crc32c(data[nxt : nxt + 8]) == c:
                    break
                nxt += 1
            else:
                nxt = n
            why = f"{nxt - pos} damaged byte(s) (the record header fails its CRC)"
            items.append((pos, nxt, None, why))
            pos = consumed = nxt
            continue
        end = pos + 12 + length + 4
        if end > n:
            break
        body = data[pos + 12 : pos + 12 + length]
        if verify and masked_crc32c(body) != struct.unpack_from("<I", data, end - 4)[0]:
            items.append((pos, end, None, "data CRC mismatch"))
        else:
            items.append((pos, end, body, None))
        pos = consumed = end
    return items, consumed


def ref_scan(path: Path, data: bytes, verify: bool, scan: _Scan | None) -> tuple[_Scan, int]:
    scan = scan or _Scan(record=0, skip=set(), args={})
    items, consumed = ref_records(data, verify)
    for pos, _, body, damage in items:
        scan.record += 1
        where = f"record {scan.record} at byte {pos}"
        if body is None:
            scan.problems.append(Problem(str(path), None, f"{where}: {damage}; skipped"))
            continue
        try:
            wall, step, values = parse_event(body)
        except (ValueError, IndexError, struct.error) as e:
            msg = f"{where}: undecodable event ({e}); skipped"
            scan.problems.append(Problem(str(path), None, msg))
            continue
        if wall is not None and epoch_seconds(wall) is None:
            msg = f"{where}: {time_problem('wall_time', wall)}"
            scan.problems.append(Problem(str(path), None, msg))
            wall = None
        for tag, value, extra in values:
            if isinstance(extra, tuple):
                if tag in ("args/text_summary", "args") and not scan.args:
                    scan.args = _hf_args(extra[1])
                continue
            if isinstance(extra, str) and extra not in ("scalars", ""):
                scan.skip.add(tag)
            if value is None or tag in scan.skip or step < 0 or twin(tag):
                continue
            canonical = add_scalar(scan.steps, scan.metric_rows, step, wall, tag, value)
            if not canonical and tag in FINAL_TAGS:
                scan.ended_at = step
    return scan, consumed


def ref_points(data: bytes, verify: bool) -> list[tuple[str, int, float | None, float]]:
    out = []
    skip: set[str] = set()
    for _, _, body, _ in ref_records(data, verify)[0]:
        if body is None:
            continue
        wall, step, values = parse_event(body)
        for tag, value, extra in values:
            if isinstance(extra, str) and extra not in ("scalars", ""):
                skip.add(tag)
            if value is not None and tag not in skip:
                out.append((tag, step, wall, value))
    return out


def plain(obj: Any) -> Any:
    """Floats by their repr, so that NaN equals NaN."""
    if isinstance(obj, float):
        return repr(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


# ---- the tests ----------------------------------------------------------------------


def earlier() -> _Scan:
    """What an earlier read left: steps re-emitted, a tag known to be a histogram."""
    scan = _Scan(record=3, skip={"train/grad_norm"}, args={})
    for step in (1, 2, 5, 30):
        scan.steps[step] = [1.0, {"loss": 9.0, "tokens": 3.0}]
    return scan


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("resumed", [False, True])
def test_bulk_decode_agrees_with_a_per_record_decode(tmp_path, seed, verify, resumed):
    data, _ = mixed_file(seed)
    path = tmp_path / "events.out.tfevents.1.host"
    path.write_bytes(data)
    want, want_consumed = ref_scan(path, data, verify, earlier() if resumed else None)
    got = earlier() if resumed else _Scan(record=0, skip=set(), args={})
    consumed = TensorBoardReader(verify_crc=verify)._scan(path, data, 0, got)
    assert consumed == want_consumed
    assert got.record == want.record
    assert [p.reason for p in got.problems] == [p.reason for p in want.problems]
    assert any("damaged byte(s)" in p.reason for p in got.problems) or seed % 2
    assert got.skip == want.skip and got.args == want.args and got.ended_at == want.ended_at
    assert plain(got.steps) == plain(want.steps)
    assert plain(got.metric_rows) == plain(want.metric_rows)
    assert len(got.steps) > 100 and got.metric_rows


@pytest.mark.parametrize("seed", range(4))
def test_read_scalars_agrees_with_a_per_record_decode(tmp_path, seed):
    data, damaged = mixed_file(seed, undecodable=False)
    path = tmp_path / "events.out.tfevents.1.host"
    path.write_bytes(data)
    for verify in (False, True):
        assert plain(read_scalars(path, verify)) == plain(ref_points(data, verify))
    framed = [(s, e, w) for s, e, _, w in iter_records(data, 0, True)]
    assert [(s, e, w) for s, e, _, w in ref_records(data, True)[0]] == framed
    assert {s for s, _, w in framed if w == "data CRC mismatch"} == set(damaged)


def test_a_damaged_header_is_named_and_the_records_after_it_kept(tmp_path):
    good = [record(event(1.7e9 + i, i, [simple("train/loss", float(i))])) for i in range(1, 6)]
    bad = bytearray(good[2])
    bad[3] ^= 0xFF
    path = tmp_path / "events.out.tfevents.1.host"
    path.write_bytes(b"".join(good[:2]) + bytes(bad) + b"".join(good[3:]))
    result = TensorBoardReader().read(path, None)
    assert result.steps.column("step").to_pylist() == [1, 2, 4, 5]
    offset = len(good[0]) + len(good[1])
    assert [p.reason for p in result.problems] == [
        f"record 3 at byte {offset}: {len(bad)} damaged byte(s) "
        "(the record header fails its CRC); skipped"
    ]


def test_nan_values_and_walls_survive_the_bulk_path(tmp_path):
    path = tmp_path / "events.out.tfevents.1.host"
    recs = [
        event(1.7e9, 1, [simple("train/loss", float("nan"))]),
        event(float("nan"), 2, [simple("train/loss", 1.5)]),
    ]
    path.write_bytes(b"".join(record(r) for r in recs))
    result = TensorBoardReader().read(path, None)
    loss = result.steps.column("loss").to_pylist()
    assert math.isnan(loss[0]) and loss[1] == 1.5
    assert result.steps.column("ts").to_pylist() == [1.7e9, None]
    assert [p.reason for p in result.problems] == [
        f"record 2 at byte {len(record(recs[0]))}: {time_problem('wall_time', float('nan'))}"
    ]


def test_long_runs_of_repeating_record_sizes_are_framed_like_one_by_one(tmp_path):
    # three tags a step: record sizes repeat in a cycle of three, and change
    # when the step's varint grows a byte (at 128) and where a record is damaged
    recs = [
        bytearray(record(event(1.7e9 + step, step, [simple(tag, step * 0.5)])))
        for step in range(1, 1501)
        for tag in ("train/loss", "train/learning_rate", "grad_norm")
    ]
    recs[2000][2] ^= 0x10  # a header: the walk must not trust a predicted offset past it
    recs[3001][20] ^= 0x01  # a data byte
    data = b"".join(bytes(r) for r in recs) + bytes(recs[0])[:30]
    path = tmp_path / "events.out.tfevents.1.host"
    path.write_bytes(data)
    for verify in (False, True):
        want = [(s, e, w) for s, e, _, w in ref_records(data, verify)[0]]
        assert [(s, e, w) for s, e, _, w in iter_records(data, 0, verify)] == want
        assert plain(read_scalars(path, verify)) == plain(ref_points(data, verify))
    assert len(want) == 4500 and sum(w is not None for _, _, w in want) == 2
