"""Siblings: grouping runs by base model, dataset and finetuning type (from every
format's config files), TS501 judged against the group's own spread, and
``tunescope compare``."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tunescope.cli import main
from tunescope.config import parse_config
from tunescope.detectors.base import Context
from tunescope.detectors.scans.siblings import group_runs, run_settings, settings, sibling_groups
from tunescope.detectors.sibling_gap import Member, Options, judge
from tunescope.errors import ConfigError
from tunescope.ingest.store.database import Store
from tunescope.report.compare import compare
from tunescope.train.events import EventWriter

REPO = Path(__file__).parents[2]
REAL = REPO / "fixtures" / "real"
FORMATS = REPO / "fixtures" / "formats"


def _groups(root: Path, groups: dict[str, list[str]] | None = None):
    store = Store.open(root)
    ctx = Context(store, None, groups=groups or {})
    return store, run_settings(ctx), sibling_groups(ctx)


# ---- settings under canonical names ----------------------------------------------------


def test_settings_read_each_tools_names():
    ours = settings(
        {
            "model": "tiny-llama",
            "finetuning_type": "lora",
            "config": {"data": "fixtures/dataset/alpaca_tiny.jsonl", "lr": 1e-3, "lora_r": 8},
        }
    )
    assert ours["model"] == "tiny-llama" and ours["dataset"] == "alpaca_tiny.jsonl"
    assert ours["learning_rate"] == 1e-3 and ours["lora_r"] == 8
    assert "lr" not in ours and "data" not in ours  # one name per setting
    swift = settings(
        {"config": {"model": "/models/Qwen/Qwen3-0.6B/", "dataset": ["b.jsonl", "a.jsonl"],
                    "train_type": "LoRA", "lora_rank": "16", "learning_rate": "1e-4"}}
    )  # fmt: skip
    assert swift["model"] == "qwen3-0.6b"  # a path and a hub id name one model
    assert swift["dataset"] == "a.jsonl,b.jsonl"
    assert swift["finetuning_type"] == "lora" and swift["lora_r"] == 16
    assert swift["learning_rate"] == pytest.approx(1e-4)
    peft = settings({"config": {"model": "Qwen/Qwen3-0.6B", "target_modules": ["v", "q"]}})
    assert peft["model"] == "qwen3-0.6b" and peft["lora_target"] == "q,v"


def test_grouping_needs_a_model_or_a_dataset_and_two_runs():
    configs = {
        "a": {"model": "m", "dataset": "d", "finetuning_type": "lora", "learning_rate": 1e-3},
        "b": {"model": "m", "dataset": "d", "finetuning_type": "lora", "learning_rate": 1e-4},
        "c": {"model": "m", "dataset": "other", "finetuning_type": "lora"},
        "d": {"learning_rate": 1e-3},
        "e": {"learning_rate": 1e-3},
    }
    groups = group_runs(configs)
    assert [(g.name, g.runs) for g in groups] == [("m / d / lora", ["a", "b"])]
    forced = group_runs(configs, {"mine": ["c", "d*"]})
    assert {g.name: g.runs for g in forced} == {"m / d / lora": ["a", "b"], "mine": ["c", "d"]}
    assert all(g.configured for g in forced if g.name == "mine")


def test_groups_override_is_read_from_the_config():
    cfg = parse_config({"groups": {"sweep": ["r*", "base"]}}, Path("tunescope.toml"))
    assert cfg.groups == {"sweep": ["r*", "base"]}
    with pytest.raises(ConfigError, match=r"groups\.sweep: expected a list"):
        parse_config({"groups": {"sweep": "r*"}}, Path("tunescope.toml"))


# ---- each foreign format's config files --------------------------------------------------


def _hf_run(root: Path, name: str, lr: float, r: int) -> None:
    shutil.copytree(FORMATS / "hf-trainer", root / name, ignore=shutil.ignore_patterns("runs"))
    (root / name / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "sshleifer/tiny-gpt2", "r": r, "lora_alpha": 2 * r,
                    "target_modules": ["c_attn"], "peft_type": "LORA"})
    )  # fmt: skip
    (root / name / "training_args.json").write_text(
        json.dumps({"learning_rate": lr, "seed": 42, "output_dir": str(root / name)})
    )
    (root / name / "training_args.bin").write_bytes(b"\x80\x04not unpickled")


def test_hf_trainer_runs_group_by_their_adapter_and_training_args(tmp_path):
    _hf_run(tmp_path, "r4", 1e-3, 4)
    _hf_run(tmp_path, "r16", 1e-4, 16)
    store, conf, groups = _groups(tmp_path)
    assert conf["r4"]["model"] == "tiny-gpt2" and conf["r4"]["finetuning_type"] == "lora"
    assert conf["r4"]["lora_r"] == 4 and conf["r16"]["learning_rate"] == pytest.approx(1e-4)
    assert [g.runs for g in groups] == [["r16", "r4"]]
    store.close()


def test_llamafactory_and_swift_read_their_args_files(tmp_path):
    for name, lr in (("lf-a", 1e-4), ("lf-b", 5e-5)):
        (tmp_path / name).mkdir()
        shutil.copy(REAL / "llamafactory-pref-stopped-early" / "trainer_log.jsonl", tmp_path / name)
        (tmp_path / name / "training_args.yaml").write_text(
            f"model_name_or_path: meta-llama/Llama-3-8B\ndataset: dpo_en\n"
            f"finetuning_type: lora\nlora_rank: 8\nlearning_rate: {lr}\n"
        )
    for name, rank in (("swift-a", 8), ("swift-b", 64)):
        (tmp_path / name).mkdir()
        shutil.copy(REAL / "msswift-qwen3-sft-20" / "logging.jsonl", tmp_path / name)
        (tmp_path / name / "args.json").write_text(
            json.dumps({"model": "Qwen/Qwen3-0.6B", "dataset": ["alpaca-gpt4-data-en"],
                        "train_type": "lora", "lora_rank": rank, "learning_rate": 1e-4})
        )  # fmt: skip
    store, conf, groups = _groups(tmp_path)
    assert conf["lf-b"]["learning_rate"] == pytest.approx(5e-5) and conf["lf-a"]["lora_r"] == 8
    assert conf["swift-b"]["lora_r"] == 64
    assert {g.name: g.runs for g in groups} == {
        "llama-3-8b / dpo_en / lora": ["lf-a", "lf-b"],
        "qwen3-0.6b / alpaca-gpt4-data-en / lora": ["swift-a", "swift-b"],
    }
    store.close()


def test_wandb_and_mlflow_configs_group_their_runs(tmp_path):
    for name in ("a", "b"):
        shutil.copytree(REAL / "alpaca-llama7b-fsdp-wandb", tmp_path / "wandb" / name)
    store, conf, groups = _groups(tmp_path / "wandb")
    assert conf["a"].get("model") and conf["a"].get("learning_rate")
    assert [g.runs for g in groups] == [["a", "b"]]
    store.close()
    shutil.copytree(FORMATS / "mlruns", tmp_path / "ml" / "mlruns")
    store, conf, groups = _groups(tmp_path / "ml")
    with_params = [r for r, c in conf.items() if c.get("model") == "tiny-gpt2"]
    assert with_params and all(conf[r].get("lora_r") for r in with_params)
    store.close()


# ---- TS501 statistics on synthetic groups ------------------------------------------------


def _curve(final: float, steps: int = 200, noise: float = 0.02, seed: int = 0, nan_at=None):
    rng = np.random.default_rng(seed)
    step = np.arange(1, steps + 1)
    loss = final + (5.0 - final) * np.exp(-step / 30) + rng.normal(0, noise, steps)
    if nan_at is not None:
        loss[step >= nan_at] = np.nan
    return step, loss


def _member(run: str, final: float, rng: int = 0, nan_at=None, **config) -> Member:
    base = {"model": "m", "dataset": "d", "finetuning_type": "lora", "lora_r": 8,
            "lora_alpha": 16, "learning_rate": 1e-3, "seed": 0}  # fmt: skip
    return Member(run, {**base, **config}, *_curve(final, seed=rng, nan_at=nan_at))


def test_ts501_names_the_low_rank_run_and_the_rank():
    group = [
        _member("r2", 2.0, 1, lora_r=2, lora_alpha=4),
        _member("r8", 1.5, 2),
        _member("r32", 1.2, 3, lora_r=32, lora_alpha=64),
    ]
    found = {f.run: f for f in judge("g", group, Options())}
    assert set(found) == {"r2", "r8"}
    f = found["r2"]
    assert f.evidence["key"] == "lora_r" and f.evidence["keys"] == ["lora_alpha", "lora_r"]
    assert "r=2" in f.message and "r32" in f.message
    assert f.suggestion.startswith("raise the LoRA rank")
    assert {c["run"] for c in f.evidence["compared"]} == {"r2", "r8", "r32"}


def test_ts501_names_a_diverged_learning_rate():
    group = [
        _member("lr1e-2", 1.2, 1, learning_rate=1e-2, nan_at=90),
        _member("lr1e-3", 1.3, 2),
        _member("lr1e-4", 1.31, 3, learning_rate=1e-4),
    ]
    found = judge("g", group, Options())
    assert [f.run for f in found] == ["lr1e-2"]
    assert found[0].evidence["key"] == "learning_rate"
    assert "diverged" in found[0].message and "step 90" in found[0].message
    assert found[0].suggestion.startswith("lower the learning rate")


def test_ts501_silent_within_seed_noise_too_few_or_too_noisy():
    # settings differ, but the gaps are within the spread of replicate seeds
    noisy = [_member(f"s{i}", 1.5 + d, i, seed=i) for i, d in enumerate((0.0, 0.12, -0.1))]
    noisy += [_member("lr", 1.55, 9, learning_rate=2e-3)]
    assert judge("g", noisy, Options()) == []
    # only seeds differ: noise, not a fix, however far apart the runs ended
    seeds = [_member(f"s{i}", v, i, seed=i) for i, v in enumerate((1.2, 1.5, 2.0))]
    assert judge("g", seeds, Options()) == []
    # two runs are too few to judge
    two = [_member("a", 1.2, 1), _member("b", 2.0, 2, learning_rate=1e-2)]
    assert judge("g", two, Options()) == []
    # a gap under min-gap of the loss is not a finding, however quiet the curves
    close = [_member(f"r{r}", 1.5 + 0.01 * i, i, lora_r=r) for i, r in enumerate((4, 8, 16))]
    assert judge("g", close, Options()) == []


def test_ts501_needs_evidence_that_keys_change_together():
    # two settings that differ between two runs only "change together" by
    # construction: that pair is not one factor, so no setting is blamed
    pair = [
        _member("a", 1.2, 1),
        _member("b", 2.0, 2, learning_rate=1e-2, max_steps=300),
        _member("c", 1.21, 3, lora_target="q_proj"),
    ]
    assert [f for f in judge("g", pair, Options()) if f.run == "b"] == []
    # the same difference in one setting alone is blamed
    one = [
        _member("a", 1.2, 1),
        _member("b", 2.0, 2, learning_rate=1e-2),
        _member("c", 1.21, 3, lora_target="q_proj"),
    ]
    assert [f.run for f in judge("g", one, Options())] == ["b"]


def test_ts501_does_not_judge_a_run_broken_on_purpose():
    group = [
        _member("nan", 1.2, 1, schedule="cosine", inject=["nan@90"], nan_at=90),
        _member("a", 1.3, 2, schedule="constant"),
        _member("b", 1.31, 3, schedule="constant", lora_r=16),
    ]
    assert judge("g", group, Options()) == []


def test_ts501_judges_at_the_step_all_runs_reached():
    short = _member("short", 1.2, 1, learning_rate=1e-2)
    short.step, short.loss = short.step[:150], short.loss[:150]
    group = [short, _member("mid", 1.2, 2), _member("low", 2.0, 3, learning_rate=1e-4)]
    found = judge("g", group, Options())
    assert [f.run for f in found] == ["low"] and found[0].evidence["step"] == 150


# ---- compare and TS501 through the CLI ---------------------------------------------------


def _write(root: Path, name: str, r: int, final: float, seed: int) -> None:
    step, loss = _curve(final, seed=seed)
    with EventWriter(root / name, rank=0) as w:
        w.run_start(ts=1.0, model="tiny", finetuning_type="lora", lora_r=r, total_steps=200,
                    config={"data": "d.jsonl", "lr": 1e-3, "lora_r": r, "lora_alpha": 2 * r,
                            "seed": seed, "run_name": name})  # fmt: skip
        for s, v in zip(step, loss, strict=True):
            w.step(step=int(s), ts=1.0 + s, loss=float(v), lr=1e-3, tokens=1000,
                   step_time_s=0.5, mem_peak_mb=100.0 + r)  # fmt: skip
        w.run_end("completed", ts=300.0)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    for i, (r, final) in enumerate(((2, 2.2), (8, 1.6), (32, 1.3), (64, 1.25))):
        _write(tmp_path, f"r{r}", r, final, i)
    return tmp_path


def test_compare_prints_the_diff_outcomes_and_trends(sweep, capsys):
    assert main(["compare", str(sweep), "--cache-dir", str(sweep / ".c")]) == 0
    out = capsys.readouterr().out
    assert "group tiny / d.jsonl / lora: 4 runs" in out
    assert "config: 3 setting(s) differ" in out  # lora_alpha, lora_r, seed (not run_name)
    config, outcomes = out.split("\n\n")[1:3]
    rows = {ln.split()[0]: ln.split() for ln in config.splitlines()[1:]}
    assert rows["run"] == ["run", "lora_alpha", "lora_r", "seed"]
    assert rows["r2"] == ["r2", "4", "2", "0"] and rows["r64"] == ["r64", "128", "64", "3"]
    cells = {ln.split()[0]: ln.split() for ln in outcomes.splitlines()}
    assert cells["run"] == ["run", "loss@50", "loss@100", "loss@150", "final", "tokens",
                            "s/step", "peak", "MB"]  # fmt: skip
    assert float(cells["r2"][4]) == pytest.approx(2.2, abs=0.05)
    assert cells["r2"][5:] == ["200,000", "0.5", "102"]
    assert "lora_r: rho -1.00 over 4 runs (strong: higher, lower loss)" in out
    assert "seed:" not in out.split("what tracks")[1]  # a seed is not a setting to tune
    # two of the run directories, one setting, JSON
    assert main(["compare", str(sweep / "r2"), str(sweep / "r8"), "--by", "lora_r",
                 "--format", "json", "--cache-dir", str(sweep / ".c")]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"] == ["r2", "r8"] and doc["keys"] == ["lora_r"]
    assert doc["trends"] == [{"key": "lora_r", "n": 2, "rho": None}]  # no claim from two runs
    assert doc["outcomes"]["r2"]["tokens"] == 200_000


def test_compare_refuses_one_run_and_unknown_keys(sweep, capsys):
    assert main(["compare", str(sweep / "r2"), "--cache-dir", str(sweep / ".c")]) == 2
    assert "compare needs two or more runs" in capsys.readouterr().err
    assert main(["compare", str(sweep), "--by", "lora_rank", "--cache-dir", str(sweep / ".c")]) == 2
    err = capsys.readouterr().err
    assert "--by lora_rank: no run logged this setting" in err and "lora_r" in err


def test_analyze_reports_ts501_and_the_group(sweep, capsys):
    main(["analyze", str(sweep), "--select", "TS501", "--format", "json", "--cache-dir",
          str(sweep / ".c")])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    flagged = {f["run"]: f for f in doc["findings"]}
    assert set(flagged) == {"r2", "r8"}
    assert flagged["r2"]["evidence"]["key"] == "lora_r"
    assert {r["run"]: r.get("group") for r in doc["runs"]}["r64"] == "tiny / d.jsonl / lora"
    main(["analyze", str(sweep), "--select", "TS501", "--format", "markdown", "--cache-dir",
          str(sweep / ".c")])  # fmt: skip
    md = capsys.readouterr().out
    assert "### Siblings" in md and "**tiny / d.jsonl / lora**: 4 runs" in md
    assert "**Fix:** raise the LoRA rank" in md


def test_explain_ts501(capsys):
    assert main(["explain", "TS501"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("TS501") and "min-runs" in out and "max-noise" in out


def test_compare_on_a_context_keeps_nan_runs_apart(tmp_path):
    _write(tmp_path, "a", 8, 1.5, 0)
    _write(tmp_path, "b", 16, 1.4, 1)
    with EventWriter(tmp_path / "c", rank=0) as w:
        w.run_start(ts=1.0, model="tiny", finetuning_type="lora",
                    config={"data": "d.jsonl", "lora_r": 4})  # fmt: skip
        for s in range(1, 201):
            w.step(step=s, ts=1.0 + s, loss=math.nan if s > 100 else 2.0)
    store = Store.open(tmp_path)
    c = compare(Context(store, None))
    assert c.table["c"]["diverged_at"] == 101 and math.isinf(c.table["c"]["final"])
    store.close()


# ---- the sweep corpus (fixtures/sweeps, `make sweeps`) ----------------------------------

SWEEPS = REPO / "fixtures" / "sweeps"


def _ts501(tmp_path: Path, *roots: str):
    from tunescope.detectors.engine import analyze

    for r in roots:
        shutil.copytree(SWEEPS / r, tmp_path / r)
    store = Store.open(tmp_path)
    found = analyze(store, select=["TS501"])
    store.close()
    return found


def test_ts501_on_the_sweep_names_the_low_ranks_and_the_too_high_lr(tmp_path):
    found = {f.run: f for f in _ts501(tmp_path, "grid")}
    key = {r: f.evidence["key"] for r, f in found.items()}
    # at lr 1e-3, r=2 and r=8 end clearly above r=32
    assert key["grid/r2-lr1e-3"] == key["grid/r8-lr1e-3"] == "lora_r"
    assert found["grid/r2-lr1e-3"].suggestion.startswith("raise the LoRA rank")
    # r=32 at lr 1e-2 ends far above r=32 at 1e-3: too high
    assert key["grid/r32-lr1e-2"] == "learning_rate"
    assert found["grid/r32-lr1e-2"].suggestion.startswith("lower the learning rate")
    # every lr 1e-4 run: too low
    assert all(key[f"grid/r{r}-lr1e-4"] == "learning_rate" for r in (2, 8, 32))
    assert "grid/r32-lr1e-3" not in found  # the best run
    ev = found["grid/r2-lr1e-3"].evidence
    assert ev["siblings"][0]["run"] == "grid/r32-lr1e-3" and len(ev["compared"]) == 9


def test_ts501_is_silent_on_the_seed_noise_sweep(tmp_path):
    from tunescope.findings import Severity

    found = _ts501(tmp_path, "seeds")
    assert [f for f in found if f.severity.level >= Severity.WARNING.level] == []


def test_html_report_lists_the_group_and_ts501(sweep, tmp_path, capsys):
    page = tmp_path / "report.html"
    assert main(["report", str(sweep), "-o", str(page), "--cache-dir", str(sweep / ".c")]) == 0
    html = page.read_text()
    assert "<h4>Siblings</h4>" in html and "<b>tiny / d.jsonl / lora</b>: 4 runs" in html
    assert "<i>Fix:</i> raise the LoRA rank" in html


# ---- TS502: the single-run capacity hint -------------------------------------------------


def _flat_early(n: int = 300, level: float = 4.0):
    step = np.arange(1, n + 1)
    loss = level + 1.0 * np.exp(-step / 15) + np.random.default_rng(0).normal(0, 0.01, n)
    lr = np.where(step < 10, step / 10, 0.5 * (1 + np.cos(np.pi * step / n))) * 1e-3
    return step, loss, lr


def test_ts502_hints_at_a_small_adapter_that_flattened_early():
    from tunescope.detectors.capacity import Options as CapOptions
    from tunescope.detectors.capacity import hint

    step, loss, lr = _flat_early()
    alive = np.full(len(step), 0.5)
    lora = {"finetuning_type": "lora", "lora_r": 4, "lora_target": "all-linear"}
    found = hint(lora, step, loss, lr, alive, np.array([4.3, 4.1, 4.1]), CapOptions())
    assert found is not None and found[0].startswith("r=4 LoRA: the loss flattened at 4")
    attn = {"finetuning_type": "lora", "lora_r": 64, "lora_target": "q_proj,v_proj"}
    assert hint(attn, step, loss, lr, alive, None, CapOptions())[0].startswith("attention-only")
    big = {**lora, "lora_r": 64}
    assert hint(big, step, loss, lr, alive, None, CapOptions()) is None
    assert (
        hint({**lora, "finetuning_type": "full"}, step, loss, lr, alive, None, CapOptions()) is None
    )
    assert hint(lora, step, loss, lr, np.zeros(len(step)), None, CapOptions()) is None  # TS201
    rising = np.array([4.1, 4.3, 4.6])  # overfitting is TS104's
    assert hint(lora, step, loss, lr, alive, rising, CapOptions()) is None
    steady = 6.0 - step / 100  # still falling at the end: not flat
    assert hint(lora, step, steady, lr, alive, None, CapOptions()) is None
