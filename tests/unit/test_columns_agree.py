"""The readers' column paths (Megatron iteration lines, the Trainer's printed
dicts, the general reader's record lines) give the rows, metrics, events,
problems and state that reading the same bytes line by line gives: on clean
logs, and on logs with one line broken in each of the ways logs break."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tunescope.ingest.readers import general_bulk
from tunescope.ingest.readers.console import dict_bulk, megatron
from tunescope.ingest.readers.console.reader import ConsoleReader
from tunescope.ingest.readers.general import GeneralReader


def megatron_log(n: int = 300) -> list[str]:
    out = ["[before the start of training step] datetime: 2024-01-01 00:00:00\n"]
    for i in range(1, n + 1):
        out.append(
            f" iteration {i:8d}/{n:8d} | consumed samples: {i * 32:12d} | "
            f"elapsed time per iteration (ms): {600 + i % 50:.1f} | "
            f"learning rate: {1e-4 * (1 - i / n):.3E} | global batch size:    32 | "
            f"lm loss: {3.0 / (1 + i / 100):.6E} | loss scale: 1.0 | "
            f"grad norm: {1 + (i % 9) / 10:.3f} | number of skipped iterations:   0 | "
            f"number of nan iterations:   0 |\n"
        )
        if i == 3:
            out.append(
                "[Rank 0] (after 3 iterations) memory (MB) | allocated: 1000.5 | "
                "max allocated: 2000.0 | reserved: 3000.0 | max reserved: 3000.0\n"
            )
        if i % 100 == 0:
            out.append(f" validation loss at iteration {i} | lm loss value: 2.9E+00 |\n")
    return out


def hf_log(n: int = 120) -> list[str]:
    out = ["***** Running training *****\n", "  Num examples = 1,000\n"]
    total = n * 5
    for d in range(1, n + 1):
        for s in range(5 * d - 4, 5 * d + 1):
            out.append(
                f"\r{100 * s // total:3d}%|#   | {s}/{total} [00:{s % 60:02d}<10:00, 2.1it/s]\n"
            )
        out.append(
            f"{{'loss': {2 / (1 + d / 50) + d % 7 * 1e-3:.4f}, 'grad_norm': {0.5 + d % 13 / 10:.4f}, "
            f"'learning_rate': {1e-4 * (1 - d / n):.6e}, 'epoch': {d / n * 3:.2f}}}\n"
        )
    return out


def home_made_log(n: int = 400) -> list[str]:
    return [
        f"2024-05-01 12:{s // 60 % 60:02d}:{s % 60:02d},{s % 1000:03d} - INFO - ppo - "
        f"rollout={s} rl_loss={2 / (1 + s / 500):.4f} reward_mean={s % 13 / 10:.3f} "
        f"kl={s % 17 * 1e-3:.4f} lr=1.0e-05 time={100 + s % 50:.1f}ms\n"
        for s in range(1, n + 1)
    ]


def long_dict(lines: list[str], at: int, size: int) -> list[str]:
    """The dict at ``at`` with its grad_norm padded with digits to ``size`` bytes
    (a dict literal is found up to 8195 bytes long)."""
    line = lines[at].rstrip("\n")
    head, _, tail = line.partition("'grad_norm': ")
    value, _, rest = tail.partition(",")
    digits = "1" + "0" * (size - len(line) + len(value) - 1)
    out = list(lines)
    out[at] = f"{head}'grad_norm': {digits},{rest}\n"
    assert len(out[at]) == size + 1
    return out


def swap(lines: list[str], at: int, old: str, new: str) -> list[str]:
    out = list(lines)
    assert old in out[at]
    out[at] = out[at].replace(old, new, 1)
    return out


def insert(lines: list[str], at: int, text: str) -> list[str]:
    return [*lines[:at], text, *lines[at:]]


MEG = megatron_log()
HF = hf_log()
OWN = home_made_log()
DICT_AT = [i for i, line in enumerate(HF) if line.startswith("{'loss'")]

CASES = {
    "megatron": MEG,
    "megatron-nan-loss": swap(MEG, 50, "lm loss: ", "lm loss: nan #"),
    "megatron-inf": swap(MEG, 60, "grad norm: ", "grad norm: inf"),
    "megatron-binary-line": insert(MEG, 70, "\x00\xff garbage \x01 | : /\n"),
    "megatron-field-missing": swap(MEG, 80, " | loss scale: 1.0", ""),
    "megatron-field-more": swap(MEG, 90, " 1.0 |", " 1.0 | num zeros: 3.0 |"),
    "megatron-torn": swap(MEG, 100, MEG[100], MEG[100][:60] + "\n"),
    "megatron-traceback": insert(
        MEG, 150, 'Traceback (most recent call last):\n  File "x"\nRuntimeError: boom\n'
    ),
    "megatron-crlf": swap(MEG, 160, " |\n", " |\r\n"),
    "megatron-prefixed": swap(MEG, 170, " iteration", "[2024-01-01 00:00:00] iteration"),
    "megatron-padding": swap(MEG, 180, "lm loss: ", "lm loss:    "),
    "megatron-underscore": swap(MEG, 190, "global batch size:    32", "global batch size: 3_2"),
    "megatron-signed": swap(MEG, 202, "iteration      200", "iteration     +200"),
    "megatron-restart": MEG + MEG[1:40],
    "hf": HF,
    "hf-nan": swap(HF, DICT_AT[5], "'loss': ", "'loss': nan, 'x': "),
    "hf-quoted": swap(HF, DICT_AT[6], "'loss': ", "'loss': '"),
    "hf-eval": insert(HF, DICT_AT[7], "{'eval_loss': 1.5, 'eval_runtime': 2.0, 'epoch': 0.2}\n"),
    "hf-torn": swap(HF, DICT_AT[8], HF[DICT_AT[8]], HF[DICT_AT[8]][:30] + "\n"),
    "hf-binary": insert(HF, DICT_AT[9], "\x00\xff\xfe {'loss': \x01}\n"),
    "hf-other-order": swap(HF, DICT_AT[10], "{'loss'", "{'grad_norm': 1.0, 'loss'"),
    "hf-summary": [*HF, "{'train_runtime': 12.0, 'train_loss': 1.5, 'epoch': 3.0}\n"],
    "hf-summary-midway": insert(HF, DICT_AT[20], "{'train_runtime': 1.0, 'train_loss': 1.5}\n"),
    "hf-tensor": swap(HF, DICT_AT[11], "'loss': ", "'loss': tensor(1.5, device='cuda:0'), 'l': "),
    "hf-ansi": swap(HF, DICT_AT[12], "{'loss'", "\x1b[32m{'loss'"),
    "hf-none": swap(HF, DICT_AT[13], "'grad_norm': ", "'grad_norm': None, 'g': "),
    "hf-no-bar": swap(HF, DICT_AT[14] - 1, "/600 [", "/600 ("),
    "hf-rerun": [*HF, "***** Running training *****\n", *HF[2:200]],
    "hf-longest-dict": long_dict(HF, DICT_AT[15], 8195),
    "hf-too-long-dict": long_dict(HF, DICT_AT[16], 8196),
    "hf-traceback-end": [
        *HF,
        'Traceback (most recent call last):\n  File "x"\nKeyboardInterrupt\n',
    ],
    "home-made": OWN,
    "home-made-nan": swap(OWN, 100, "rl_loss=", "rl_loss=nan"),
    "home-made-nAn": swap(OWN, 101, "rl_loss=", "rl_loss=nAn0"),
    "home-made-other-line": insert(OWN, 200, "checkpoint saved to /tmp/x\n"),
    "home-made-binary": insert(OWN, 210, "\x00\xfe rollout=\x80\n"),
    "home-made-layout": swap(OWN, 220, " kl=", " kl2="),
    "home-made-torn": swap(OWN, 230, OWN[230], OWN[230][:70] + "\n"),
    "home-made-grouped": swap(OWN, 240, "rl_loss=", "rl_loss=1,234"),
    "home-made-word": swap(OWN, 250, "rl_loss=", "rl_loss=abc"),
    "home-made-negative-step": swap(OWN, 260, "rollout=", "rollout=-"),
    "home-made-blank-lines": insert(OWN, 270, "\n\n"),
    "home-made-crlf": swap(OWN, 280, "ms\n", "ms\r\n"),
    "home-made-eval": insert(
        OWN, 290, "2024-05-01 12:00:00,000 - INFO - ppo - rollout=290 val_loss=1.5\n"
    ),
    "home-made-header": insert(OWN, 300, "Epoch 2/10\n"),
    "home-made-rank": swap(OWN, 310, " - ppo - ", " - ppo - [rank1] "),
    "home-made-restart": OWN + OWN[:30],
}


def _slow(monkeypatch) -> None:
    """Turn the column paths off: every line is read one by one."""
    monkeypatch.setattr(megatron, "bulk", lambda data: None)
    monkeypatch.setattr(dict_bulk, "bulk", lambda data, keys, total: None)
    monkeypatch.setattr(general_bulk, "bulk", lambda data: None)


def _key(value):
    """A value that sorts and compares, NaN equal to NaN."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    return value


def _table(table) -> list:
    return sorted((tuple(_key(v) for v in row.values()) for row in table.to_pylist()), key=repr)


def _outcome(result) -> dict:
    state = json.loads(json.dumps(result.state, default=str))
    state.pop("gap", None)  # how far apart rows lie: a median here, a running mean there
    state.pop("inode", None)
    return {
        "steps": _table(result.steps),
        "metrics": _table(result.metrics),
        "events": _table(result.events),
        "problems": [str(p) for p in result.problems],
        "state": state,
        "subruns": [(name, _outcome(r)) for name, r in result.subruns],
    }


def _reads(path: Path, text: bytes, reader) -> list[dict]:
    """The outcome of reading the whole file, then of reading it as it grows
    in three parts (a line torn in the middle of the second)."""
    path.write_bytes(text)
    out = [_outcome(reader.read(path, None))]
    path.write_bytes(b"")
    state = None
    for cut in (len(text) // 3, 2 * len(text) // 3 + 7, len(text)):
        with open(path, "ab") as f:
            f.write(text[path.stat().st_size : cut])
        result = reader.read(path, state)
        state = result.state
        out.append(_outcome(result))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_columns_read_what_lines_read(tmp_path, monkeypatch, case):
    text = "".join(CASES[case]).encode("utf-8", "surrogateescape")
    reader = GeneralReader() if case.startswith("home-made") else ConsoleReader()
    path = tmp_path / "train.log"  # the same path (it is in the run_start event)
    fast = _reads(path, text, reader)
    _slow(monkeypatch)
    slow = _reads(path, text, reader)
    assert fast[0]["steps"], "the log has rows"
    for got, want in zip(fast, slow, strict=True):
        for part in ("steps", "metrics", "events", "problems", "subruns", "state"):
            assert got[part] == want[part], part


def test_the_clean_logs_are_read_as_columns(tmp_path):
    """The cases above compare something: their clean logs take the column paths."""
    for name, reader, bulk in (
        ("megatron", ConsoleReader(), megatron.bulk),
        ("hf", ConsoleReader(), None),
        ("home-made", GeneralReader(), general_bulk.bulk),
    ):
        path = tmp_path / name / "train.log"
        path.parent.mkdir()
        path.write_text("".join(CASES[name]))
        result = reader.read(path, None)
        assert result.steps.num_rows > 100
        data = path.read_bytes()
        if bulk is not None:
            assert bulk(data) is not None
        else:
            from tunescope.ingest.readers.foreign import keymap_for

            assert dict_bulk.bulk(data, keymap_for(path), None) is not None


HEADS = {
    **CASES,
    # lines a block's header matches: each takes in the line after it
    "header-lines": [
        f"[2024-01-01 00:00:{s:02d}] step {s}/40, loss={3 - s / 50:.3f}, lr=0.0001\n"
        for s in range(1, 41)
    ],
    # headers with the pairs indented below them
    "header-blocks": [
        f"2025-12-27 00:58:00.517\thost-03:0\tolmo.train:990\tINFO\t[step={s}/100,epoch=0]\n"
        f"    train/CrossEntropyLoss={3 - s / 50:.3f}\n    optim/total_grad_norm=0.5\n"
        for s in range(1, 41)
    ],
}


@pytest.mark.parametrize("case", sorted(HEADS))
def test_a_head_read_through_columns_gives_the_same_records(case):
    """The general reader infers a text log's shape from records read with the
    columns where lines share a layout (records_fast): the same records."""
    from tunescope.ingest.readers.general_text import records

    data = "".join(HEADS[case]).encode("utf-8", "surrogateescape")
    for part in (data, data[: len(data) // 2]):  # the second ends in a torn line
        want = [(r.pos, r.rank, _key(repr(r.pairs))) for r in records(part)]
        got = [(r.pos, r.rank, _key(repr(r.pairs))) for r in general_bulk.records_fast(part)]
        assert got == want
