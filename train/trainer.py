"""The bundled trainer: LoRA, QLoRA, full and freeze fine-tuning that writes
tunescope event logs. Read it top to bottom: the job's setup (data, model,
arguments, faults, guard), one pass of the Trainer (one more per guard
rewind), the summary.

    tunescope train fixtures/configs/lora.yaml --set lr=1e-3 --inject lr_spike@120
    torchrun --nproc_per_node 2 -m tunescope.train fixtures/configs/lora.yaml

The loop is transformers' ``Trainer`` (AdamW, warmup + schedule, clipping,
accumulation, mixed precision, checkpoints and exact resume); the logging is
:class:`~tunescope.train.callback.TunescopeCallback`, the same callback anyone
can add to their own ``Trainer``. The config is :mod:`tunescope.train.config`,
the model :mod:`tunescope.train.model`, faults :mod:`tunescope.train.faults`,
the guard :mod:`tunescope.train.guard` and its rewinds :mod:`tunescope.train.rewind`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tunescope.say import error, say
from tunescope.train.config import (  # noqa: F401  (REPO, DEFAULT_DATA: imported from here too)
    DEFAULT_DATA,
    REPO,
    TrainConfig,
    add_train_arguments,
    guard_sets,
    load_config,
)
from tunescope.train.model import check_environment, dist_env, load_model, quiet_libraries


def train(cfg: TrainConfig) -> int:
    """Run one training job (one rank under torchrun); returns an exit code."""
    check_environment(cfg)
    quiet_libraries()
    t_start = time.monotonic()
    job = Job(cfg)
    try:
        while job.one_pass():  # one pass, or one more per guard rewind
            job.after_rewind()
    except KeyboardInterrupt:
        job.bar.close()
        # under `tunescope train --nproc` the launcher says it once for every rank
        if os.environ.get("TUNESCOPE_LAUNCHER") or job.rank != 0:
            raise
        say(job.interrupted())
        from tunescope.errors import ExitCode

        return int(ExitCode.INTERRUPTED)
    finally:
        job.bar.close()
    return job.finish(time.monotonic() - t_start)


class Job:
    """One training job on this rank: set up once, then passes of the
    ``Trainer`` (a guard rewind restarts from a checkpoint in a new pass)."""

    def __init__(self, cfg: TrainConfig) -> None:
        import torch
        from transformers import set_seed

        from tunescope.progress import Progress, wanted
        from tunescope.train.guard import Guard
        from tunescope.train.rewind import SkipList

        self.cfg = cfg
        self.rank, _local, self.world = dist_env()
        self.cuda = torch.cuda.is_available()
        if cfg.cpu_threads and not self.cuda:
            torch.set_num_threads(cfg.cpu_threads)
        set_seed(cfg.seed)
        self.out = Path(cfg.output_dir)
        self._data_and_model()
        self.resume = self._resume_point()
        self.args = self._training_arguments()
        self.faults = self._faults()
        self.guard = Guard(cfg.guard, can_rewind=True)
        # batches a guard rewind skipped, kept for any later resume of this run
        self.skips = SkipList.load(self.out) if self.resume else SkipList()
        self.extra = self._run_start_extra()
        self.fault_cb: Any = None
        self.ts_cb: Any = None
        self.trainer: Any = None
        self.first_record: dict[str, Any] | None = None
        # steps, loss and ETA on rank 0's terminal (never in CI or a pipe)
        show = cfg.progress and self.rank == 0 and wanted()
        self.bar = Progress("train", "{task.fields[loss]}", enabled=show)

    # ---- setup ---------------------------------------------------------------------

    def _data_and_model(self) -> None:
        from tunescope.errors import TrainError
        from tunescope.train.data import SFTDataset, read_records, split

        cfg = self.cfg
        try:
            fmt, records = read_records(Path(cfg.data), cfg.data_format)
        except ValueError as e:
            raise TrainError(str(e)) from None
        held_out = cfg.eval_fraction if cfg.eval_steps else 0.0
        train_recs, eval_recs = split(records, held_out, cfg.seed)
        self.model, self.tok = load_model(cfg)
        self.train_ds = SFTDataset(train_recs, fmt, self.tok, cfg.seq_len)
        self.eval_ds = SFTDataset(eval_recs, fmt, self.tok, cfg.seq_len) if eval_recs else None

    def _resume_point(self) -> str | None:
        from tunescope.errors import TrainError

        resume = self.cfg.resume_from_checkpoint
        if resume == "latest":
            ckpts = sorted(self.out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
            if not ckpts:
                raise TrainError(f"resume_from_checkpoint: latest: no checkpoint-N in {self.out}")
            return str(ckpts[-1])
        if resume and not Path(resume).is_dir():
            raise TrainError(f"resume_from_checkpoint: {resume}: no such checkpoint directory")
        return resume

    def _training_arguments(self) -> Any:
        from transformers import TrainingArguments

        cfg, world = self.cfg, self.world
        return TrainingArguments(
            output_dir=str(self.out),
            max_steps=cfg.max_steps if cfg.max_steps else -1,
            num_train_epochs=cfg.epochs,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            learning_rate=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_steps=cfg.warmup_steps,
            lr_scheduler_type="constant_with_warmup"
            if cfg.schedule == "constant"
            else cfg.schedule,
            max_grad_norm=cfg.max_grad_norm,
            optim="adamw_torch",
            bf16=cfg.precision == "bf16",
            fp16=cfg.precision == "fp16",
            save_strategy="steps" if cfg.save_steps else "no",
            save_steps=cfg.save_steps or 500,
            save_total_limit=cfg.save_total_limit,
            eval_strategy="steps" if self.eval_ds is not None else "no",
            eval_steps=cfg.eval_steps or None,
            logging_strategy="no",  # the callback logs every step; the Trainer's own logs stay off
            report_to=[],
            disable_tqdm=True,  # our own bar (rank 0, on a terminal) shows steps, loss and ETA
            seed=cfg.seed,
            data_seed=cfg.seed,
            remove_unused_columns=False,  # keep sample_ids for the callback
            dataloader_num_workers=0,
            use_cpu=not self.cuda,
            ddp_backend=("nccl" if self.cuda else "gloo") if world > 1 else None,
            ddp_find_unused_parameters=False if world > 1 else None,
            ddp_broadcast_buffers=False,  # no buffer needs syncing: one collective less per step
            save_only_model=False,
            average_tokens_across_devices=False,
        )

    def _faults(self) -> list[Any]:
        from tunescope.errors import TrainError
        from tunescope.train.faults import parse_faults

        faults = parse_faults(self.cfg.inject)
        for f in faults:
            if f.rank is not None and f.rank >= self.world:
                raise TrainError(
                    f"fault {f.spec}: rank {f.rank} does not exist (world size {self.world})"
                )
        return faults

    def _run_start_extra(self) -> dict[str, Any]:
        import torch

        extra: dict[str, Any] = {}
        if self.cuda:
            extra["device_memory_mb"] = torch.cuda.get_device_properties(0).total_memory / 1024**2
        if self.cfg.device_memory_mb:
            extra["device_memory_mb"] = self.cfg.device_memory_mb
        if self.guard.policy.active:
            extra["guard"] = self.guard.policy.to_json()
        return extra

    # ---- the loop -------------------------------------------------------------------

    def one_pass(self) -> bool:
        """Train from ``self.resume`` until the end, a stop or a guard rewind;
        True when the guard asks for a rewind."""
        from transformers import Trainer
        from transformers.trainer_callback import PrinterCallback

        from tunescope.train import faults as faults_mod
        from tunescope.train.callback import TunescopeCallback
        from tunescope.train.data import Collator
        from tunescope.train.rewind import guarded_trainer

        cfg = self.cfg
        self.args.max_grad_norm = cfg.max_grad_norm  # a previous pass's callback took clipping over
        ts_cb = self.ts_cb = TunescopeCallback(
            self.out,
            cfg.run_name,
            config=cfg.to_dict(),
            faults=[f.to_json() for f in self.faults],
            webhook=cfg.webhook,
            guard=self.guard,
            extra_run_start=self.extra,
        )
        callbacks: list[Any] = []
        if self.faults and self.fault_cb is None:
            self.fault_cb = faults_mod.make_callback(self.faults, ts_cb, seed=cfg.seed + self.rank)
            callbacks.append(self.fault_cb)
        callbacks.append(ts_cb)
        callbacks.append(_progress_callback(ts_cb, self.bar))
        if cfg.stop_at_step:
            callbacks.append(_stop_callback(cfg.stop_at_step))
        self.trainer = guarded_trainer(Trainer, self.skips)(
            model=self.model,
            args=self.args,
            train_dataset=self.train_ds,
            eval_dataset=self.eval_ds,
            data_collator=Collator(self.tok.pad_token_id),
            callbacks=callbacks,
        )
        self.trainer.remove_callback(PrinterCallback)  # stdout stays clean; the log has everything
        try:
            self.trainer.train(resume_from_checkpoint=self.resume)
        except KeyboardInterrupt:
            ts_cb.finish("interrupted", "KeyboardInterrupt")
            raise
        except Exception as e:
            ts_cb.finish("failed", f"{type(e).__name__}: {e}")
            raise
        self.first_record = self.first_record or ts_cb.first
        return self.guard.rewind is not None

    def after_rewind(self) -> None:
        """Set up the next pass after a guard rewind: the batches from the onset
        to the detection are never trained again; injected faults were an
        incident of the pass that ended (they model a transient failure, not a
        property of the run)."""
        r, self.guard.rewind = self.guard.rewind, None
        assert r is not None
        for s in range(r["onset"], r["step"] + 1):
            self.skips.items.update(self.trainer.positions.get(s, []))
        if self.rank == 0:
            self.skips.save(self.out)
        if self.fault_cb is not None:
            self.fault_cb.remove()
        self.resume = r["checkpoint"]

    def interrupted(self) -> str:
        """The line a Ctrl-C gets: what was kept and how to go on."""
        step = self.ts_cb.last_step if self.ts_cb is not None else None
        at = f" at step {step}" if step else ""
        events = self.out / "events"
        if not any(self.out.glob("checkpoint-*")):
            again = "no checkpoint was saved: --overwrite starts it again"
        else:
            again = "--resume continues it from its latest checkpoint"
        return (
            f"interrupted{at}: the log was kept ({events}/) and the run marked interrupted; {again}"
        )

    def finish(self, seconds: float) -> int:
        """The summary line (rank 0), the process group's end, the exit code."""
        import torch

        if self.rank == 0:
            (self.out / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=1) + "\n")
            self.ts_cb.first = self.first_record
            _summary(self.cfg, self.ts_cb, seconds, self.world, self.guard)
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        if self.guard.stopped is not None:
            from tunescope.errors import ExitCode

            if self.rank == 0:
                say(f"to resume: tunescope train CONFIG --set {self.guard.stopped['resume']}")
            return int(ExitCode.FINDINGS)
        return 0


def _summary(cfg: TrainConfig, cb: Any, seconds: float, world: int, guard: Any) -> None:
    """One line on stderr: what was trained and where the log is."""
    first, last = cb.first or {}, cb.last or {}
    loss = ""
    if "loss" in first and "loss" in last:
        loss = f", loss {first['loss']:.3f} -> {last['loss']:.3f}"
    ranks = f" x {world} ranks" if world > 1 else ""
    acted = []
    if guard.skipped_total:
        acted.append(f"{guard.skipped_total} step(s) skipped")
    if guard.rewinds:
        acted.append(f"{guard.rewinds} rewind(s)")
    if guard.stopped:
        acted.append(f"stopped at step {guard.stopped['step']}")
    if guard.hangs:
        acted.append(f"{guard.hangs} hang checkpoint(s)")
    did = f"; guard: {', '.join(acted)}" if acted else ""
    say(
        f"trained {cfg.model} ({cfg.method}) for {cb.last_step} steps{ranks}{loss} "
        f"in {seconds:.0f}s{did}; log: {Path(cfg.output_dir) / 'events'}/"
    )


def _progress_callback(ts_cb: Any, bar: Any) -> Any:
    """A callback that moves ``bar`` after each step, with the step's loss."""
    from transformers import TrainerCallback

    class ShowProgress(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            loss = (ts_cb.last or {}).get("loss")
            text = f"loss {loss:.3f}" if isinstance(loss, float) else ""
            bar.update(state.global_step, state.max_steps or None, loss=text)

    return ShowProgress()


def _stop_callback(step: int) -> Any:
    """A callback that stops training after ``step`` (the run ends 'interrupted')."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= step:
                control.should_training_stop = True

    return StopAt()


def main(argv: list[str] | None = None) -> int:
    """``python -m tunescope.train CONFIG [--set k=v ...] [--inject FAULT ...]``
    (what torchrun runs on each rank)."""
    import argparse

    from tunescope.errors import ConfigError, TunescopeError

    p = argparse.ArgumentParser(prog="python -m tunescope.train")
    add_train_arguments(p, nproc=False, config_optional=True)
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, guard_sets(a), a.inject or [])
    except ValueError as e:
        error(str(e))
        return int(ConfigError.exit_code)
    try:
        # `tunescope train` claimed it before launching; under a bare torchrun rank 0 does
        if not os.environ.get("TUNESCOPE_LAUNCHER") and os.environ.get("RANK", "0") == "0":
            from tunescope.train.config import claim_output_dir

            removed = claim_output_dir(cfg, overwrite=a.overwrite)
            if removed:
                say(removed)
        return train(cfg)
    except TunescopeError as e:
        error(str(e))
        return int(e.exit_code)
    except KeyboardInterrupt:
        # the log already says "interrupted"; under `tunescope train --nproc`
        # the launcher reports it once, so a rank exits quietly (a non-zero
        # code would make torchrun print every rank's failure)
        if os.environ.get("TUNESCOPE_LAUNCHER"):
            return 0
        say("interrupted")
        return 130
