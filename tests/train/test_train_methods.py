"""Each fine-tuning method and the main options run and say what they did in run_start."""

from __future__ import annotations

import pytest
from train_helpers import events, steps, tiny_config

from tunescope.train.trainer import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("name", "over"),
    [
        ("full", {"method": "full", "grad_accum": 2, "schedule": "linear", "max_steps": 3}),
        ("freeze", {"method": "freeze", "freeze_trainable_layers": 1, "max_steps": 3}),
        (
            "lora-qv",
            {
                "lora_target": ["q_proj", "v_proj"],
                "lora_modules_to_save": [],
                "use_rslora": True,
                "gradient_checkpointing": True,
                "data": str(REPO / "fixtures" / "dataset" / "tiny.txt"),
                "max_steps": 3,
            },
        ),
        ("eval", {"eval_steps": 2, "eval_fraction": 0.01, "max_steps": 4}),
    ],
)
def test_method_runs_and_describes_itself(tmp_path, name, over):
    from tunescope.train.trainer import train

    run = tmp_path / name
    assert train(tiny_config(run, **over)) == 0
    ev = events(run)
    start = ev[0]
    assert start["kind"] == "run_start" and ev[-1]["status"] == "completed"
    rows = steps(run)
    assert [s["step"] for s in rows] == list(range(1, over["max_steps"] + 1))
    if name == "full":
        assert start["finetuning_type"] == "full"
        assert start["trainable_params"] == start["total_params"]
        assert len(rows[0]["sample_ids"]) == 8  # two micro-batches of 4
        assert "grad_norm_adapter" not in rows[0]
    elif name == "freeze":
        assert start["finetuning_type"] == "freeze"
        assert 0 < start["trainable_params"] < start["total_params"] / 2
    elif name == "lora-qv":
        assert start["finetuning_type"] == "lora"
        assert start["target_modules"] == ["q_proj", "v_proj"]
        assert start["adapted_modules"] == start["expected_adapted_modules"] == 6
        assert start["use_rslora"] is True
        assert start["config"]["data"].endswith("tiny.txt")
        assert all(s["grad_norm_backbone"] == 0.0 for s in rows)
        assert all(s["grad_norm_adapter"] > 0 for s in rows[1:])
    else:
        evals = [e for e in ev if e["kind"] == "eval"]
        assert [e["step"] for e in evals] == [2, 4]
        assert all(e["eval_loss"] > 0 for e in evals)


def test_qlora_on_cpu_is_a_clean_error(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("qlora is allowed where CUDA exists")
    from tunescope.cli import main

    config = str(REPO / "fixtures" / "configs" / "lora.yaml")
    rc = main(["train", config, "--set", "method=qlora", "--set", f"output_dir={tmp_path}"])
    assert rc == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
