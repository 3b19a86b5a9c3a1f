"""The sweep index behind TS501 (:class:`~tunescope.detectors.scans.siblings.Sweep`):
the runs that differ from a run in one factor only, found by lookup, must be
exactly the ones a comparison of every pair finds; and the runs a finding's
evidence lists."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from tunescope.detectors.scans.siblings import NOISE_KEYS, Sweep, shown
from tunescope.detectors.sibling_gap import MAX_COMPARED, Member, Options, _one_factor, judge


def _differs(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted((set(a) | set(b)) - NOISE_KEYS)
    return [k for k in keys if shown(a.get(k)) != shown(b.get(k))]


def _together(keys: list[str], configs: dict[str, dict[str, Any]]) -> bool:
    """The definition, pair by pair: every key's value decides every other's,
    and a bundle of keys takes three values or more."""
    if len(keys) > 1 and len({tuple(shown(c.get(k)) for k in keys) for c in configs.values()}) < 3:
        return False
    for a in keys:
        for b in keys:
            seen: dict[str, str] = {}
            for c in configs.values():
                if seen.setdefault(shown(c.get(a)), shown(c.get(b))) != shown(c.get(b)):
                    return False
    return True


def _pairwise(configs: dict[str, dict[str, Any]]) -> list[list[tuple[int, list[str]]]]:
    """Per run, every other run whose differing keys are one factor TS501 may blame."""
    runs = list(configs)
    out = []
    for a in runs:
        mine = []
        for o, b in enumerate(runs):
            keys = _differs(configs[a], configs[b])
            if a != b and keys and _together(keys, configs):
                mine.append((o, keys))
        out.append(mine)
    return out


def _indexed(configs: dict[str, dict[str, Any]]) -> list[list[tuple[int, list[str]]]]:
    sweep = Sweep(configs)
    return [
        [(o, f.keys) for o, f in sweep.siblings(i) if _one_factor(f)] for i in range(len(configs))
    ]


def _random_group(rng: random.Random) -> dict[str, dict[str, Any]]:
    """A messy sweep: factors at one to four values, alpha tied to the rank
    or not, keys missing or empty, a key that follows the lr at two values,
    numbers that show alike (1e-3 and 0.001), seeds and names that differ."""
    lrs = rng.sample([1e-4, 2e-4, 1e-3, 0.001, 5e-3, 1e-2], rng.randint(1, 4))
    ranks = rng.sample([2, 4, 8, 16, 32], rng.randint(1, 4))
    targets = rng.sample(["q,v", "q,k,v", "all", None], rng.randint(1, 3))
    follows = rng.random() < 0.4
    out = {}
    for i in range(rng.randint(2, 24)):
        lr, r = rng.choice(lrs), rng.choice(ranks)
        c: dict[str, Any] = {"learning_rate": lr, "lora_r": r, "seed": rng.randint(0, 2),
                             "run_name": f"run{i}", "model": "m"}  # fmt: skip
        c["lora_alpha"] = 2 * r if rng.random() < 0.8 else rng.choice([8, 16])
        target = rng.choice(targets)
        if target is not None:
            c["lora_target"] = target
        if follows:
            c["max_steps"] = 300 if lr == lrs[0] else 200
        if rng.random() < 0.15:
            c["extra"] = rng.choice(["a", "", None, [1, 2]])
        if rng.random() < 0.1:
            c["nested.flag"] = True
        out[f"run{i:02d}"] = c
    return out


def test_index_finds_what_comparing_every_pair_finds():
    rng = random.Random(501)
    for _ in range(80):
        configs = _random_group(rng)
        assert _indexed(configs) == _pairwise(configs)


def test_keys_that_change_together_are_one_factor_at_three_values():
    base = {"learning_rate": 1e-3, "seed": 0}
    three = {f"r{r}": {**base, "lora_r": r, "lora_alpha": 2 * r} for r in (2, 8, 32)}
    three["lr"] = {**base, "learning_rate": 1e-2, "lora_r": 8, "lora_alpha": 16}
    sweep = Sweep(three)
    assert sorted(f.keys for f in sweep.factors) == [["learning_rate"], ["lora_alpha", "lora_r"]]
    # r8 differs from r2 and r32 in the rank (with alpha), from lr in the lr only
    got = {three_name: [(list(three)[o], f.keys) for o, f in sweep.siblings(i)]
           for i, three_name in enumerate(three)}  # fmt: skip
    assert got["r8"] == [("r2", ["lora_alpha", "lora_r"]), ("r32", ["lora_alpha", "lora_r"]),
                         ("lr", ["learning_rate"])]  # fmt: skip
    assert got["r2"] == [("r8", ["lora_alpha", "lora_r"]), ("r32", ["lora_alpha", "lora_r"])]
    assert all(_one_factor(f) for f in sweep.factors)
    # at two values a bundle "changes together" by construction: no evidence
    two = {k: v for k, v in three.items() if k != "r32"}
    bundle = next(f for f in Sweep(two).factors if len(f.keys) == 2)
    assert bundle.values == 2 and not _one_factor(bundle)


def test_seeds_names_and_missing_keys_do_not_make_siblings():
    configs = {
        "a": {"learning_rate": 1e-3, "seed": 0, "run_name": "a", "extra": ""},
        "b": {"learning_rate": 1e-3, "seed": 1, "run_name": "b"},  # a replicate of a
        "c": {"learning_rate": 0.001, "seed": 2, "output_dir": "/tmp/c"},  # 1e-3 too
        "d": {"learning_rate": 1e-2, "lora_r": 8},  # two factors away from a
        "e": {"learning_rate": 1e-2},
        "f": {"learning_rate": 1e-3, "lora_r": 8},
    }
    sweep = Sweep(configs)
    assert [f.keys for f in sweep.factors] == [["learning_rate"], ["lora_r"]]
    names = list(configs)
    for run in "abc":
        got = [(names[o], f.keys) for o, f in sweep.siblings(names.index(run))]
        assert got == [("e", ["learning_rate"]), ("f", ["lora_r"])]


def _members(lrs: tuple[float, ...], seeds: int) -> list[Member]:
    """lr x rank (alpha 2r) x seeds, where a low lr and a low rank end higher."""
    out = []
    step = np.arange(1, 201)
    for i, lr in enumerate(lrs):
        for j, r in enumerate((2, 8, 32)):
            for seed in range(seeds):
                final = 1.2 + 0.3 * (len(lrs) - 1 - i) + 0.2 * (2 - j)
                rng = np.random.default_rng(len(out))
                loss = final + (3.0 - final) * np.exp(-step / 30) + rng.normal(0, 0.01, len(step))
                config = {"learning_rate": lr, "lora_r": r, "lora_alpha": 2 * r, "seed": seed}
                out.append(Member(f"lr{i}-r{r}-s{seed}", config, step, loss))
    return out


def test_evidence_lists_the_group_or_in_a_large_one_the_run_and_its_siblings():
    small = _members((1e-4, 1e-3), 5)  # 30 runs: every one is listed
    found = judge("g", small, Options())
    assert found and all(len(f.evidence["compared"]) == 30 for f in found)
    large = _members((1e-5, 1e-4, 1e-3, 1e-2), 5)  # 60 runs
    assert len(large) > MAX_COMPARED
    configs = {m.run: m.config for m in large}
    found = judge("g", large, Options())
    assert len(found) > 20
    for f in found:
        listed = [e["run"] for e in f.evidence["compared"]]
        # the run, and the runs one setting away (the lr, or the rank with its alpha)
        one = (["learning_rate"], ["lora_alpha", "lora_r"])
        want = [r for r in configs if r == f.run or _differs(configs[f.run], configs[r]) in one]
        assert listed == want and len(listed) == 1 + 15 + 10
        assert {s["run"] for s in f.evidence["siblings"]} <= set(listed)
