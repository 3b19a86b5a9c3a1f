"""Writes the small bundled dataset ``fixtures/dataset/`` (seeded, offline).

Short instruction/response pairs from a handful of templated tasks (arithmetic,
reversing words, opposites, spelling numbers, plurals, counting letters): a
byte-level model learns their shape quickly, so a healthy run's loss falls and
then flattens, as a real fine-tune's does.

    python -m tunescope.train.dataset_gen fixtures/dataset
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

WORDS = [
    "garden",
    "river",
    "window",
    "silver",
    "planet",
    "candle",
    "forest",
    "bridge",
    "marble",
    "orange",
    "pencil",
    "rocket",
    "winter",
    "summer",
    "basket",
    "castle",
    "dragon",
    "engine",
    "falcon",
    "guitar",
    "harbor",
    "island",
    "jacket",
    "kettle",
    "lemon",
    "meadow",
    "needle",
    "ocean",
    "pepper",
    "quartz",
    "rabbit",
    "saddle",
    "tunnel",
    "velvet",
    "wagon",
    "yellow",
    "zipper",
    "anchor",
    "button",
    "cactus",
    "desert",
    "feather",
    "glacier",
    "hammer",
]
OPPOSITES = {
    "hot": "cold",
    "up": "down",
    "big": "small",
    "fast": "slow",
    "light": "dark",
    "early": "late",
    "open": "closed",
    "happy": "sad",
    "full": "empty",
    "strong": "weak",
    "high": "low",
    "young": "old",
    "wet": "dry",
    "loud": "quiet",
    "near": "far",
    "rich": "poor",
}
ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = [
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def spell(n: int) -> str:
    if n < 10:
        return ONES[n]
    if n < 20:
        return TEENS[n - 10]
    t, o = divmod(n, 10)
    return TENS[t] + ("" if o == 0 else "-" + ONES[o])


def plural(w: str) -> str:
    if w.endswith(("s", "x", "z", "ch", "sh")):
        return w + "es"
    if w.endswith("y") and w[-2] not in "aeiou":
        return w[:-1] + "ies"
    return w + "s"


def example(rng: random.Random) -> dict[str, str]:
    task = rng.randrange(6)
    if task == 0:
        a, b = rng.randrange(10, 60), rng.randrange(10, 40)
        return {"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} + {b} = {a + b}"}
    if task == 1:
        w = rng.choice(WORDS)
        return {"instruction": "Reverse the word.", "input": w, "output": w[::-1]}
    if task == 2:
        w, o = rng.choice(sorted(OPPOSITES.items()))
        if rng.random() < 0.5:
            w, o = o, w
        return {
            "instruction": f"What is the opposite of '{w}'?",
            "input": "",
            "output": f"The opposite of '{w}' is '{o}'.",
        }
    if task == 3:
        n = rng.randrange(0, 100)
        return {"instruction": "Write the number in words.", "input": str(n), "output": spell(n)}
    if task == 4:
        w = rng.choice(WORDS)
        return {"instruction": f"Give the plural of '{w}'.", "input": "", "output": plural(w)}
    w = rng.choice(WORDS)
    c = rng.choice(sorted(set(w)))
    return {
        "instruction": f"How many times does the letter '{c}' appear in '{w}'?",
        "input": "",
        "output": f"'{c}' appears {w.count(c)} time{'s' if w.count(c) != 1 else ''} in '{w}'.",
    }


def write(out: Path, n: int = 2000, seed: int = 1234) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(out / "alpaca_tiny.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, **example(rng)}) + "\n")
    paras = []
    for _ in range(300):
        w = rng.choice(WORDS)
        a, b = rng.randrange(10, 60), rng.randrange(10, 40)
        paras.append(
            f"The {w} has {spell(a % 100)} {plural(rng.choice(WORDS))}. "
            f"Reversed, {w} reads {w[::-1]}. {a} plus {b} is {a + b}."
        )
    (out / "tiny.txt").write_text("\n\n".join(paras) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "fixtures/dataset"))
