"""Step lines of other trainers' console output.

- torchtune's log file (``DiskLogger``): ``Step 12 | loss:1.234 lr:2e-05 tokens_per_second_per_gpu:812.3``
- torchtune's progress bar: ``1|12|Loss: 1.234``
- DeepSpeed's pipeline engine: ``steps: 12 loss: 1.2345 iter time (s): 0.512 samples/sec: 15.6``
- accelerate or hand-written loops: ``step 12 loss 1.234``, ``Step 12/1000, loss=1.234, lr=2e-5``,
  ``[step: 12] loss: 1.234 | grad_norm: 0.81``

A line counts when a step number comes before a loss on it. Every other
``name: number`` or ``name=number`` on the line is kept, mapped onto the
canonical columns where the name is known (``lr``, ``grad_norm``...).
"""

from __future__ import annotations

import re

from tunescope.ingest.readers.vocabulary import CANONICAL, HIGH, meaning
from tunescope.ingest.readers.vocabulary import LINE_ALIASES as ALIASES

_NUM = rb"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|NaN|inf|Inf|-inf)"
STEP_LINE = re.compile(
    rb"(?i)(?<![\w/])(?:global[_ ]step|steps?|iter(?:ation)?s?)\s*[:=#]?\s*(\d+)(?:\s*/\s*(\d+))?"
    rb"(?![\d.])([^\n\r]{0,300}?)\bloss\s*[:=]?\s*(" + _NUM + rb")([^\n\r]{0,2000})"
)
TORCHTUNE_BAR = re.compile(rb"(?<![\w|])(\d+)\|(\d+)\|Loss: (" + _NUM + rb")")
_PAIR = re.compile(rb"([A-Za-z_][\w/().-]{0,60}?)\s*[:=]\s*\[?(" + _NUM + rb")\]?(?![\w.])")
# an evaluation's loss written without ":" or "=" ("val loss 2.79", "test loss: 2.8 BPC")
_EVAL_LOSS = re.compile(
    rb"(?i)(?<![\w/])(val|valid|validation|eval|test|dev)[ _]loss\s*[:=]?\s*("
    + _NUM
    + rb")(?![\w.])"
)
_SKIP = {"step", "steps", "iter", "iteration", "global_step", "epoch"}


def line_fields(rest: bytes) -> tuple[dict[str, float], dict[str, float]]:
    """(canonical, other) metrics of every ``name: number`` on ``rest``."""
    canon: dict[str, float] = {}
    extras: dict[str, float] = {}
    for m in _PAIR.finditer(rest):
        key = m.group(1).decode("ascii", "replace").strip().lower()
        try:
            value = float(m.group(2))
        except ValueError:
            continue
        if key in _SKIP:
            if key == "epoch":
                canon.setdefault("epoch", value)
            continue
        target = CANONICAL.get(key) or ALIASES.get(key) or _known(key)
        if target is not None:
            canon.setdefault(target[0], value * target[1])
        else:
            extras[key.replace(" ", "_")] = value
    if b"loss" in rest:
        for m in _EVAL_LOSS.finditer(rest):
            extras.setdefault("eval_loss", float(m.group(2)))
    return canon, extras


def _known(name: str) -> tuple[str, float] | None:
    """The column the vocabulary is sure a name means (``actor/grad_norm``), if any."""
    m = meaning(name)
    sure = m.kind == "column" and m.confidence >= HIGH and m.scale > 0  # not an inverted rate
    return (m.column, m.scale) if sure else None


def step_line(m: re.Match[bytes]) -> tuple[int, int | None, dict[str, float], dict[str, float]]:
    """(step, total, canonical, other) of a STEP_LINE match."""
    canon, extras = line_fields(m.group(3) + b" " + m.group(5))
    canon["loss"] = float(m.group(4))
    total = int(m.group(2)) if m.group(2) else None
    return int(m.group(1)), total, canon, extras


def torchtune_bar(m: re.Match[bytes]) -> tuple[int, dict[str, float]]:
    """(step, canonical) of a TORCHTUNE_BAR match (the epoch counts from 1 there)."""
    return int(m.group(2)), {"loss": float(m.group(3))}
