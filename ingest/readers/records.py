"""Reader for home-made metric records: any JSONL, or a JSON file holding a
list of records, where a record has a step-like key and a loss-like key.

Step keys: ``step``, ``global_step``, ``train/global_step``, ``iteration``,
``current_steps``, ``_step``, ``iter``...; loss keys: ``loss``, ``train/loss``,
``train_loss``, ``lm loss``, ``train loss`` (see :data:`foreign.STEP_KEYS` and
:data:`foreign.LOSS_KEYS`); ``[tool.tunescope.ingest]`` in the config names
others. In a JSON file the records may be nested (PEFT's benchmark results
keep them in ``train_info.metrics``): the first list of such records found
within four levels is read. Evaluation fields (``eval_*``, ``val_*``,
``valid *``, ``test *``) become eval metrics; a record with
``train_runtime`` and no loss of its own is the end-of-training summary.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from pathlib import Path
from typing import Any

from tunescope.ingest.live.tail import read_new_lines
from tunescope.ingest.readers.foreign import (
    QUIET_END,
    KeyMap,
    as_int,
    cached_parse,
    infer_logging_steps,
    keymap_for,
    no_loss_problem,
    number,
)
from tunescope.ingest.readers.vocabulary import EVAL_PREFIXES
from tunescope.ingest.rows import Problem, ReadResult, RowBuilder, decoded_lines

SNIFF = 64 << 10
MAX_JSON = 64 << 20  # a JSON file larger than this is not a metrics file
# Files that are other readers' or that are never metric records.
NOT_RECORDS = (
    "trainer_state.json",
    "trainer_log.jsonl",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "adapter_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "package.json",
)
_SUMMARY = ("train_runtime", "train_samples_per_second", "train_steps_per_second")
_SUCCESS = ("success", "completed", "finished", "done")


def _const(token: str) -> float:
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[token]


def _is_record(obj: Any, keys: KeyMap) -> bool:
    return isinstance(obj, dict) and keys.step_key(obj) is not None and _has_loss(obj, keys)


def _has_loss(obj: dict[str, Any], keys: KeyMap) -> bool:
    return keys.loss_key(obj) is not None


def find_records(obj: Any, keys: KeyMap, depth: int = 0) -> tuple[list[Any], str] | None:
    """The first list (depth first, at most four levels down) whose dicts have
    a step key and a loss key, and where it is (``train_info.metrics``)."""
    if isinstance(obj, list):
        if sum(1 for o in obj[:50] if _is_record(o, keys)) >= 1:
            return obj, ""
        return None
    if isinstance(obj, dict) and depth < 4:
        for k, v in obj.items():
            if isinstance(v, list | dict):
                got = find_records(v, keys, depth + 1)
                if got is not None:
                    return got[0], f"{k}.{got[1]}".rstrip(".")
    return None


def _status(obj: Any) -> str | None:
    """A ``status`` field of the file's top levels that says the run finished."""
    if not isinstance(obj, dict):
        return None
    for v in (obj, *[x for x in obj.values() if isinstance(x, dict)]):
        s = v.get("status")
        if isinstance(s, str):
            low = s.lower()
            if low in _SUCCESS:
                return "completed"
            if low in ("failed", "error", "crashed"):
                return "failed"
            if low in ("interrupted", "killed", "cancelled", "canceled"):
                return "interrupted"
    return None


_JSON: dict[str, tuple[tuple[int, int], Any]] = {}


# Python's JSON parser counts each level of nesting against the recursion
# limit (1,000 less what the caller's stack holds). A file nested deeper (a
# deep key after its records) is parsed again with room for DEEP_JSON more
# levels; one nested deeper still is named as such, not read.
DEEP_JSON = 5_000
_LIMIT_LOCK = threading.Lock()


class _Unreadable:
    """Why a ``.json`` file could not be parsed (kept in the parse cache)."""

    def __init__(self, why: str) -> None:
        self.why = why


def _parse_json(data: bytes) -> Any:
    try:
        return json.loads(data, parse_constant=_const)
    except ValueError:
        return _Unreadable("not valid JSON")
    except RecursionError:
        pass
    with _LIMIT_LOCK:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(limit + DEEP_JSON)
        try:
            return json.loads(data, parse_constant=_const)
        except ValueError:
            return _Unreadable("not valid JSON")
        except RecursionError:
            return _Unreadable(f"nested more than {DEEP_JSON:,} levels deep: not read")
        finally:
            sys.setrecursionlimit(limit)


def _load_json(path: Path) -> Any:
    """The parsed file; None when it cannot be read or parsed."""
    got = cached_parse(_JSON, path, _parse_json)
    return None if isinstance(got, _Unreadable) else got


def json_trouble(path: Path) -> str | None:
    """Why a ``.json`` file could not be parsed (None: it was, or was not tried)."""
    hit = _JSON.get(str(path))
    return hit[1].why if hit and isinstance(hit[1], _Unreadable) else None


class Classifier:
    """Turns records into rows: the little state that crosses reads."""

    def __init__(self, keys: KeyMap, state: dict[str, Any]) -> None:
        self.keys = keys
        self.first_steps: list[int] = list(state.get("first_steps", []))
        self.started = bool(state.get("started"))
        self.ended = bool(state.get("ended"))
        self.last: int | None = state.get("last")
        self.n = int(state.get("n", 0))
        self.records = int(state.get("records", 0))
        self.quiet = bool(state.get("quiet"))  # ended by QUIET_END: taken up again on growth

    def dump(self) -> dict[str, Any]:
        return {
            "first_steps": [] if self.started else self.first_steps[:32],
            "started": self.started,
            "ended": self.ended,
            "last": self.last,
            "n": self.n,
            "records": self.records,
            "quiet": self.quiet,
        }

    def finish(self, rows: RowBuilder, first_read: bool, seq: int) -> None:
        """A first read that shows no end: interrupted until the file grows."""
        if first_read and not self.ended and self.n:
            rows.event(0, self.last, None, "run_end", dict(QUIET_END), seq=seq)
            self.ended = self.quiet = True

    def add(self, rows: RowBuilder, obj: Any, seq: int, where: str) -> Problem | None:
        self.records += 1
        if not isinstance(obj, dict):
            return Problem(where, seq, f"expected a JSON object, got {type(obj).__name__}")
        key = self.keys.step_key(obj)
        if key is None:
            return None  # a header or a config record: no step
        step = as_int(obj.get(key))
        if step is None:
            n = number(obj.get(key))
            step = int(n) if n is not None and math.isfinite(n) and n >= 0 else None
        if step is None:
            return Problem(where, seq, f"{key} is not a step: {obj.get(key)!r}")
        evals = {
            k: v
            for k, v in obj.items()
            if k.lower().startswith(EVAL_PREFIXES) and number(v) is not None
        }
        loss_key = self.keys.loss_key(obj)
        summary = any(k in obj for k in _SUMMARY) and loss_key in (None, "train_loss")
        rest = {k: v for k, v in obj.items() if k not in evals}
        if summary:
            _, extras = self.keys.canon({k: v for k, v in rest.items() if k not in (loss_key, key)})
            extras.pop("epoch", None)
            if loss_key is not None and number(obj[loss_key]) is not None:
                extras[loss_key] = number(obj[loss_key])
            for name, value in extras.items():
                rows.metric(0, step, None, name, value, seq=seq)
            if not self.ended:
                rows.event(0, step, None, "run_end", {"status": "completed", **extras}, seq=seq)
                self.ended = True
            return None
        if evals:
            values = {k: number(v) for k, v in evals.items()}
            for name, value in values.items():
                rows.metric(0, step, None, name, value, seq=seq)
            rows.event(0, step, None, "eval", values, seq=seq)
        canon, extras = self.keys.canon(rest, skip=(key,))
        if "loss" not in canon and not any(c in canon for c in ("lr", "grad_norm")):
            for name, value in extras.items():
                rows.metric(0, step, None, name, value, seq=seq)
            return None
        if self.quiet:
            rows.event(0, step, None, "resume", {"from_step": step}, seq=seq)
            self.quiet = self.ended = False
        rows.step(0, step, None, canon, seq=seq)
        for name, value in extras.items():
            rows.metric(0, step, None, name, value, seq=seq)
        self.n += 1
        self.last = step
        if not self.started:
            self.first_steps.append(step)
        return None

    def start(self, rows: RowBuilder, path: Path, fmt: str, extra: dict[str, Any]) -> None:
        if self.started or not self.first_steps:
            return
        if len(self.first_steps) < 3 and not self.ended:
            return
        payload = {
            "format": fmt,
            "source": str(path),
            "logging_steps": infer_logging_steps(self.first_steps) or 1,
            "per_rank": False,
            "loss_averaging": "as the script wrote it",
            **extra,
        }
        rows.event(0, None, None, "run_start", payload, seq=0)
        self.started = True


def _sniff_jsonl(path: Path, keys: KeyMap) -> bool:
    with open(path, "rb") as f:
        head = f.read(SNIFF)
    if b"\x00" in head[:4096]:
        return False
    for raw in head.split(b"\n")[:-1][:20]:
        raw = raw.strip()
        if not raw.startswith(b"{"):
            continue
        try:
            obj = json.loads(raw, parse_constant=_const)
        except (ValueError, RecursionError):
            continue
        if _is_record(obj, keys):
            return True
    return False


class RecordsReader:
    """Any JSONL, or JSON with a list of records, that has a step and a loss per record."""

    format = "records"

    def detect(self, path: Path) -> bool:
        name = path.name
        if name in NOT_RECORDS or path.parent.name == "events":
            return False
        if name.endswith(".jsonl"):
            return _sniff_jsonl(path, keymap_for(path))
        if not name.endswith(".json"):
            return False
        try:
            if path.stat().st_size > MAX_JSON:
                return False
            with open(path, "rb") as f:
                head = f.read(SNIFF)
        except OSError:
            return False
        if b"loss" not in head.lower() and not keymap_for(path).configured:
            return False
        obj = _load_json(path)
        return obj is not None and find_records(obj, keymap_for(path)) is not None

    def run_dir(self, path: Path) -> Path:
        """The folder, when no other record file is in it; else the file is its own run."""
        try:
            siblings = [
                p
                for p in path.parent.iterdir()
                if p != path and p.suffix in (".json", ".jsonl") and p.name not in NOT_RECORDS
            ]
        except OSError:
            siblings = []
        if any(self.detect(p) for p in siblings[:64]):
            return path.parent / path.name
        return path.parent

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult:
        keys = keymap_for(path)
        if path.name.endswith(".jsonl"):
            return self._read_jsonl(path, state, keys)
        return self._read_json(path, state, keys)

    def _read_jsonl(self, path: Path, state: dict[str, Any] | None, keys: KeyMap) -> ReadResult:
        chunk = read_new_lines(path, state)
        old = {} if (state is None or chunk.restarted) else state
        cls = Classifier(keys, old)
        rows = RowBuilder()
        problems: list[Problem] = []
        for lineno, obj in decoded_lines(path, chunk, problems):
            p = cls.add(rows, obj, lineno, str(path))
            if p is not None:
                problems.append(p)
        cls.finish(rows, not old, chunk.start + len(chunk.data) + 1)
        cls.start(rows, path, self.format, {"variant": "jsonl"})
        if cls.n == 0 and cls.records and not old.get("warned"):
            problems.append(no_loss_problem(path, cls.records))
        new_state = {**chunk.state, **cls.dump(), "warned": bool(cls.n == 0 and cls.records)}
        return rows.result(new_state, problems, replace=chunk.restarted)

    def _read_json(self, path: Path, state: dict[str, Any] | None, keys: KeyMap) -> ReadResult:
        st = path.stat()
        sig = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
        if state == sig:
            return RowBuilder().result(sig)
        obj = _load_json(path)
        if obj is None:
            why = json_trouble(path) or "not valid JSON"
            return RowBuilder().result(sig, [Problem(str(path), None, why)], True)
        found = find_records(obj, keys)
        if found is None:
            return RowBuilder().result(sig, [no_loss_problem(path, 0, "records")], True)
        records, where = found
        cls = Classifier(keys, {})
        rows = RowBuilder()
        problems: list[Problem] = []
        for i, rec in enumerate(records):
            p = cls.add(rows, rec, i + 1, f"{path} {where}[{i}]")
            if p is not None:
                problems.append(Problem(str(path), None, f"{where}[{i}]: {p.reason}"))
        status = _status(obj)
        if status is not None and not cls.ended and cls.last is not None:
            rows.event(0, cls.last, None, "run_end", {"status": status}, seq=len(records) + 1)
            cls.ended = True
        cls.finish(rows, True, len(records) + 1)
        cls.start(rows, path, self.format, {"variant": "json", "records_at": where or "."})
        if cls.n == 0:
            problems.append(no_loss_problem(path, len(records), "records"))
        return rows.result(sig, problems, replace=True)
