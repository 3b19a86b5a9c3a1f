"""A home-made training loop on accelerate that logs through
``TunescopeTracker``, run by the tests as a script, in one process or in two
under ``torch.distributed.run``: ``accelerate_loop.py RUN_DIR NAN_RANK NAN_STEP VIA``.
VIA ``accelerator``: the metrics go through ``accelerator.log`` (which
accelerate calls on the main process only); ``tracker``: through the
tracker's own ``log`` on every rank."""

from __future__ import annotations

import sys

import torch
from accelerate import Accelerator

from tunescope.train.integrations.accelerate_tracker import TunescopeTracker

STEPS = 8
LR = 0.05


def train(run_dir: str, nan_rank: int, nan_step: int, via: str) -> None:
    """A small regression for ``STEPS`` optimizer steps; this rank's loss is
    NaN at ``nan_step`` when it is rank ``nan_rank``."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tracker = TunescopeTracker(run_dir)
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    log = accelerator.log if via == "accelerator" else tracker.log
    accelerator.init_trackers("tiny", config={"lr": LR, "steps": STEPS})
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / (2 * STEPS))
    model, optimizer = accelerator.prepare(model, optimizer)  # the schedule: one step per step
    gen = torch.Generator().manual_seed(accelerator.process_index)
    x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 1, generator=gen)
    for step in range(1, STEPS + 1):
        loss = torch.nn.functional.mse_loss(model(x), y)
        if step == nan_step and accelerator.process_index == nan_rank:
            loss = loss * float("nan")
        accelerator.backward(loss)
        norm = accelerator.clip_grad_norm_(model.parameters(), 1.0)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        log({"train_loss": loss.item(), "learning_rate": lr, "grad_norm": norm}, step)
        if step % 4 == 0:
            with torch.no_grad():
                val = torch.nn.functional.mse_loss(model(x), y)
            log({"val_loss": val.item()}, step)
    accelerator.end_training()  # finishes the trackers of the main process
    tracker.finish()  # and this rank's (again on the main process: nothing happens)


if __name__ == "__main__":
    train(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
