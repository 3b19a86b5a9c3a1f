"""TunescopeLogger in a real Lightning Trainer (CPU, a few steps)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from train_helpers import events, nonfinite_findings, steps

pytestmark = pytest.mark.slow

LR, STEPS, NAN_STEP = 0.05, 8, 5


def _module(nan_step: int | None = None, raise_at: int | None = None):
    import lightning as L
    from lightning.pytorch.utilities import grad_norm

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"lr": LR, "width": 16})
            self.net = torch.nn.Sequential(
                torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
            )

        def training_step(self, batch, batch_idx):
            step = self.global_step + 1  # the optimizer step this batch makes, from 1
            if step == raise_at:
                raise RuntimeError("bad batch")
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            if step == nan_step:
                loss = loss * float("nan")
            self.log("train_loss", loss)
            return loss

        def on_before_optimizer_step(self, optimizer):
            self.log_dict(grad_norm(self, norm_type=2))

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=LR)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / (2 * STEPS))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return Tiny()


def _fit(run_dir, module):
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor

    from tunescope.train.integrations.lightning_logger import TunescopeLogger

    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = torch.utils.data.TensorDataset(torch.randn(128, 8), torch.randn(128, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    trainer = L.Trainer(
        max_steps=STEPS,
        logger=TunescopeLogger(run_dir),
        log_every_n_steps=1,
        callbacks=[LearningRateMonitor("step")],
        accelerator="cpu",
        val_check_interval=4,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, loader, loader)


def test_a_fit_writes_the_run_and_analyze_finds_the_nan(tmp_path):
    run = tmp_path / "runs" / "lit"
    _fit(run, _module(nan_step=NAN_STEP))

    ev = events(run)
    assert ev[0]["kind"] == "run_start" and ev[0]["config"] == {"lr": LR, "width": 16}
    assert ev[-1]["kind"] == "run_end" and ev[-1]["status"] == "completed"
    rows = steps(run)
    assert [s["step"] for s in rows] == list(range(1, STEPS + 1))  # Lightning's 0.. -> 1..
    for s in rows:
        # LearningRateMonitor's lr-SGD, the schedule's value for this step
        assert s["lr"] == pytest.approx(LR * (1 - (s["step"] - 1) / (2 * STEPS)))
        assert "lr-SGD" not in s and "train_loss" not in s and "grad_2.0_norm_total" not in s
        assert s["epoch"] == 0 and s["mem_allocated_mb"] > 0
    before = rows[: NAN_STEP - 1]
    assert all(math.isfinite(s["loss"]) and s["grad_norm"] > 0 for s in before)
    assert math.isnan(rows[NAN_STEP - 1]["loss"]) and math.isnan(rows[NAN_STEP - 1]["grad_norm"])
    assert "grad_2.0_norm/net.0.weight" in rows[0]  # per-parameter norms kept as extras
    assert [e["step"] for e in ev if e["kind"] == "eval" and "eval_loss" in e] == [4, 8]

    found = [f for f in nonfinite_findings(run.parent) if not _eval(f)]
    assert [(f["rank"], f["step_start"], f["severity"]) for f in found] == [(0, NAN_STEP, "error")]


def test_a_fit_that_raises_ends_the_log_as_failed(tmp_path):
    run = tmp_path / "runs" / "lit"
    with pytest.raises(RuntimeError, match="bad batch"):
        _fit(run, _module(raise_at=3))
    ev = events(run)
    # step 3 began (the monitor logged its lr) and never ended: no loss
    assert [(s["step"], "loss" in s) for s in steps(run)] == [(1, True), (2, True), (3, False)]
    assert ev[-1]["kind"] == "run_end" and ev[-1]["status"] == "failed"


def _eval(finding: dict) -> bool:
    return json.loads(finding["evidence"]).get("kind") == "eval"
