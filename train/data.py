"""Data for the bundled trainer: a byte-level tokenizer, the built-in tiny model,
Alpaca / plain-text datasets and the collator.

Everything here works offline: the built-in ``tiny-llama`` is a random-init
Llama and its tokenizer is the 256 byte values plus three special tokens.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

IGNORE = -100
BUILTIN_MODELS = ("tiny-llama",)


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, then BOS, EOS and PAD. Built offline."""

    bos_token_id = 256
    eos_token_id = 257
    pad_token_id = 258
    vocab_size = 259

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def save_pretrained(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "byte_tokenizer.json").write_text(
            json.dumps({"type": "bytes", "vocab_size": self.vocab_size}) + "\n"
        )


class HFTokenizer:
    """A transformers tokenizer behind the same three methods."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.bos_token_id = tok.bos_token_id
        self.eos_token_id = tok.eos_token_id
        self.pad_token_id = tok.pad_token_id

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens)

    def save_pretrained(self, path: str | Path) -> None:
        self.tok.save_pretrained(path)


def tiny_llama(seed: int = 0) -> Any:
    """A ~400k-parameter Llama with random weights (3 layers, hidden 96)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = ByteTokenizer
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=96,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.config.name_or_path = "tiny-llama"
    return model


# ---- datasets ----------------------------------------------------------------------


def _alpaca_prompt(rec: dict[str, Any]) -> str:
    parts = []
    if rec.get("system"):
        parts.append(f"### System:\n{rec['system']}\n\n")
    parts.append(f"### Instruction:\n{rec['instruction']}\n\n")
    if rec.get("input"):
        parts.append(f"### Input:\n{rec['input']}\n\n")
    parts.append("### Response:\n")
    return "".join(parts)


def read_records(path: Path, fmt: str) -> tuple[str, list[dict[str, Any]]]:
    """Read ``path`` as Alpaca JSON/JSONL or plain text; returns (format, records).

    Raises ``ValueError`` naming the file and line on bad input."""
    if not path.is_file():
        raise ValueError(f"{path}: no such data file")
    if fmt == "auto":
        fmt = "alpaca" if path.suffix in (".json", ".jsonl") else "text"
    text = path.read_text(encoding="utf-8")
    if fmt == "text":
        chunks = [p.strip() for p in text.split("\n\n") if p.strip()]
        return fmt, [{"id": i, "text": c} for i, c in enumerate(chunks)]
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
        numbered = list(enumerate(rows, 1))
    else:
        numbered = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: malformed JSON: {e.msg}") from None
    records: list[dict[str, Any]] = []
    for n, rec in numbered:
        if not isinstance(rec, dict) or "instruction" not in rec or "output" not in rec:
            raise ValueError(
                f"{path}:{n}: an Alpaca record needs 'instruction' and 'output' fields"
            )
        records.append({**rec, "id": rec.get("id", len(records))})
    return fmt, records


class SFTDataset(torch.utils.data.Dataset):
    """Tokenised examples. Alpaca: the prompt is masked out of the labels, the
    response is learned. Text: every token is learned."""

    def __init__(self, records: list[dict[str, Any]], fmt: str, tok: Any, seq_len: int) -> None:
        self.items = []
        for rec in records:
            if fmt == "text":
                ids = [*tok.encode(rec["text"])[: seq_len - 1], tok.eos_token_id]
                labels = list(ids)
            else:
                prompt = tok.encode(_alpaca_prompt(rec))
                answer = [*tok.encode(str(rec["output"])), tok.eos_token_id]
                ids = (prompt + answer)[:seq_len]
                labels = ([IGNORE] * len(prompt) + answer)[:seq_len]
            if any(lab != IGNORE for lab in labels[1:]):
                self.items.append((rec["id"], ids, labels))
        if not self.items:
            raise ValueError("the dataset has no example with a learnable token")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sid, ids, labels = self.items[i]
        return {"sample_id": sid, "input_ids": ids, "labels": labels}


@dataclass
class Collator:
    """Pads a batch; ``sample_ids`` stays a Python list (TunescopeCallback reads
    and removes it before the model sees the batch)."""

    pad_token_id: int

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"])
            labels[i, :k] = torch.tensor(b["labels"])
            mask[i, :k] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "sample_ids": [b["sample_id"] for b in batch],
        }


def split(records: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``fraction`` of the records for evaluation (seeded)."""
    if fraction <= 0:
        return records, []
    rng = random.Random(seed)
    order = list(range(len(records)))
    rng.shuffle(order)
    k = max(1, int(len(records) * fraction))
    held = set(order[:k])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]
