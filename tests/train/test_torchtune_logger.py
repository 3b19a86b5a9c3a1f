"""TunescopeMetricLogger named in a torchtune recipe's YAML, run by
``tune run full_finetune_single_device`` on CPU: a tiny Llama-2 made here, a
SentencePiece tokenizer trained here, a local text file as the data set."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import events, nonfinite_findings, steps

pytestmark = pytest.mark.slow

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
STEPS, NAN_STEP, LR = 6, 4, 1e-3
MODEL = {"vocab_size": 64, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2, "embed_dim": 32}


def _recipe(work: Path, run_dir: Path) -> Path:
    """The files a recipe needs, and its YAML."""
    import sentencepiece as spm
    from torchtune.models.llama2 import llama2

    lines = [f"the quick brown fox {i} jumps over the lazy dog number {i * 7}" for i in range(64)]
    (work / "data.txt").write_text("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(work / "data.txt"),
        model_prefix=str(work / "tok"),
        vocab_size=48,
        model_type="bpe",
        minloglevel=2,
    )
    torch.manual_seed(0)
    (work / "ckpt").mkdir()
    torch.save(llama2(**MODEL, max_seq_len=64).state_dict(), work / "ckpt" / "model.pt")
    model = "\n".join(f"  {k}: {v}" for k, v in MODEL.items())
    config = f"""\
output_dir: {work}/out
model:
  _component_: torchtune.models.llama2.llama2
{model}
  max_seq_len: 64
tokenizer:
  _component_: torchtune.models.llama2.llama2_tokenizer
  path: {work}/tok.model
  max_seq_len: 64
checkpointer:
  _component_: torchtune.training.FullModelTorchTuneCheckpointer
  checkpoint_dir: {work}/ckpt
  checkpoint_files: [model.pt]
  model_type: LLAMA2
  output_dir: {work}/out
resume_from_checkpoint: false
dataset:
  _component_: torchtune.datasets.text_completion_dataset
  source: text
  data_files: {work}/data.txt
  split: train
seed: 0
shuffle: false
batch_size: 8
epochs: 1
max_steps_per_epoch: {STEPS}
gradient_accumulation_steps: 1
optimizer:
  _component_: torch.optim.AdamW
  lr: {LR}
optimizer_in_bwd: false
clip_grad_norm: 1.0
loss:
  _component_: tune_parts.NanLoss
  nan_at: {NAN_STEP}
compile: false
device: cpu
dtype: fp32
enable_activation_checkpointing: false
enable_activation_offloading: false
metric_logger:
  _component_: tunescope.train.integrations.torchtune_logger.TunescopeMetricLogger
  run_dir: {run_dir}
log_every_n_steps: 1
"""
    path = work / "recipe.yaml"
    path.write_text(config)
    return path


def test_a_recipe_run_writes_the_run_and_analyze_finds_the_nan(tmp_path):
    run = tmp_path / "runs" / "tune"
    work = tmp_path / "work"
    work.mkdir()
    config = _recipe(work, run)
    tune = shutil.which("tune", path=os.path.dirname(sys.executable))
    assert tune is not None, "torchtune's `tune` command is missing (the [torchtune] extra)"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [tune, "run", "full_finetune_single_device", "--config", str(config)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ev = events(run)
    start = ev[0]
    assert start["kind"] == "run_start" and start["world_size"] == 1 and start["per_rank"]
    assert start["config"]["optimizer"]["lr"] == LR  # log_config: the resolved recipe
    assert start["config"]["metric_logger"]["run_dir"] == str(run)
    assert ev[-1]["kind"] == "run_end" and ev[-1]["status"] == "completed"
    rows = steps(run)
    assert [s["step"] for s in rows] == list(range(1, STEPS + 1))  # global_step, from 1
    for s in rows:
        assert s["lr"] == LR and s["tokens_per_s"] > 0 and s["mem_allocated_mb"] > 0
        assert "tokens_per_second_per_gpu" not in s
    assert all(math.isfinite(s["loss"]) and s["grad_norm"] > 0 for s in rows[: NAN_STEP - 1])
    assert math.isnan(rows[NAN_STEP - 1]["loss"]) and math.isnan(rows[NAN_STEP - 1]["grad_norm"])

    found = nonfinite_findings(run.parent)
    assert [(f["rank"], f["step_start"], f["severity"]) for f in found] == [(0, NAN_STEP, "error")]
    assert json.loads(found[0]["evidence"])["signals"] == ["loss", "grad_norm"]
