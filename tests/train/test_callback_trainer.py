"""TunescopeCallback inside a plain transformers Trainer built here, not by tunescope."""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import events, steps

pytestmark = pytest.mark.slow


def _trainer(out, callbacks, grad_accum=2, lora=False):
    from transformers import Trainer, TrainingArguments

    from tunescope.train.data import ByteTokenizer, Collator, SFTDataset, read_records, tiny_llama
    from tunescope.train.trainer import DEFAULT_DATA

    torch.set_num_threads(1)
    model = tiny_llama(seed=3)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        )
    fmt, recs = read_records(DEFAULT_DATA, "auto")
    tok = ByteTokenizer()
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=6,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=grad_accum,
        learning_rate=5e-3,
        max_grad_norm=0.5,  # small, so that clipping really happens
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=SFTDataset(recs[:200], fmt, tok, 64),
        data_collator=Collator(tok.pad_token_id),
        callbacks=callbacks,
    )


@pytest.fixture(scope="module")
def plain_pair(tmp_path_factory):
    """The same run without and with the callback."""
    from tunescope.train.callback import TunescopeCallback

    base = tmp_path_factory.mktemp("plain-base")
    plain = _trainer(base, [])
    plain.train()
    out = tmp_path_factory.mktemp("plain-cb")
    cb = TunescopeCallback(out / "run")
    ours = _trainer(out, [cb])
    ours.train()
    return plain, ours, out / "run"


def test_log_has_lifecycle_and_one_step_per_optimizer_step(plain_pair):
    _, _, run = plain_pair
    ev = events(run)
    assert ev[0]["kind"] == "run_start" and ev[-1]["kind"] == "run_end"
    assert ev[-1]["status"] == "completed"
    assert [s["step"] for s in steps(run)] == [1, 2, 3, 4, 5, 6]
    start = ev[0]
    assert start["model"] == "tiny-llama"
    assert start["finetuning_type"] == "full"
    assert start["total_steps"] == 6
    assert start["world_size"] == 1
    assert start["trainable_params"] == start["total_params"] > 100_000
    assert start["config"]["max_grad_norm"] == 0.5
    for s in steps(run):
        for key in ("loss", "lr", "grad_norm", "mem_allocated_mb", "step_time_s", "tokens"):
            assert key in s and math.isfinite(s[key]), key
        assert s["compute_time_s"] <= s["step_time_s"]
        assert len(s["sample_ids"]) == 8  # 2 micro-batches of 4


def test_loss_and_pre_clip_grad_norm_match_the_trainers_own(plain_pair):
    plain, _, run = plain_pair
    hf = [h for h in plain.state.log_history if "loss" in h and "grad_norm" in h]
    assert len(hf) == 6
    ours = steps(run)
    for h, s in zip(hf, ours, strict=True):
        assert s["loss"] == pytest.approx(h["loss"], abs=2e-4)
        assert s["grad_norm"] == pytest.approx(float(h["grad_norm"]), rel=1e-4)
    assert any(s["grad_norm"] > 0.5 for s in ours), "clipping never engaged"


def test_training_is_unchanged_by_the_callback(plain_pair):
    """The callback clips in place of the Trainer: the weights end up the same."""
    plain, ours, _ = plain_pair
    for (name, a), (_, b) in zip(
        plain.model.named_parameters(), ours.model.named_parameters(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5), name


def test_lora_norms_split_adapter_and_backbone(tmp_path):
    from tunescope.train.callback import TunescopeCallback

    cb = TunescopeCallback(tmp_path / "lora")
    _trainer(tmp_path, [cb], grad_accum=1, lora=True).train()
    start = events(tmp_path / "lora")[0]
    assert start["finetuning_type"] == "lora"
    assert start["lora_r"] == 4
    assert start["adapted_modules"] == start["expected_adapted_modules"] == 6
    for s in steps(tmp_path / "lora"):
        assert s["grad_norm_backbone"] == 0.0
        assert s["grad_norm_adapter"] == pytest.approx(s["grad_norm"], rel=1e-5)
        assert math.hypot(s["grad_norm_lora_A"], s["grad_norm_lora_B"]) == pytest.approx(
            s["grad_norm_adapter"], rel=1e-5
        )
    # lora_B starts at zero, so lora_A gets no gradient on the first step
    assert steps(tmp_path / "lora")[0]["grad_norm_lora_A"] == 0.0


def test_guard_skips_a_nan_step_in_a_plain_trainer(tmp_path):
    """The guard inside a Trainer built here: the step with a NaN loss is
    skipped, the weights stay finite and the run completes."""
    from tunescope.train import faults
    from tunescope.train.callback import TunescopeCallback

    cb = TunescopeCallback(tmp_path / "run", guard="skip")
    nan = faults.make_callback(faults.parse_faults(["nan@3"]), cb)
    trainer = _trainer(tmp_path, [nan, cb], grad_accum=1)
    trainer.train()
    rows = steps(tmp_path / "run")
    assert math.isnan(rows[2]["loss"]) and all(math.isfinite(r["loss"]) for r in rows[3:])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    acted = [e for e in events(tmp_path / "run") if e["kind"] == "intervention"]
    assert [(e["step"], e["action"], e["finding"]) for e in acted] == [(3, "skip", "TS001")]
    assert events(tmp_path / "run")[-1]["status"] == "completed"
