"""``tunescope train``: the bundled trainer, on one process or several ranks."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

from tunescope.errors import ExitCode, UsageError
from tunescope.say import error, say


def add(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model with the bundled trainer (LoRA, QLoRA, full, freeze)",
        description="Train from a YAML config and write tunescope event logs to "
        "OUTPUT_DIR/events/. Needs the [train] extra (torch, transformers, peft).",
        epilog="examples:\n"
        "  tunescope train fixtures/configs/lora.yaml --set max_steps=100\n"
        "  tunescope train fixtures/configs/lora.yaml --inject lr_spike@120:20\n"
        "  tunescope train fixtures/configs/lora.yaml --nproc 2 --inject straggler:1:0.05",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from tunescope.train.trainer import add_train_arguments  # torch-free module

    add_train_arguments(p)
    p.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from tunescope.errors import ConfigError
    from tunescope.train.config import claim_output_dir
    from tunescope.train.trainer import guard_sets, load_config, train

    try:
        cfg = load_config(args.config, guard_sets(args), args.inject or [])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise UsageError(
            f"tunescope train needs the [train] extra ({e.name} is missing): "
            "pip install -e '.[train]' in a clone of tunescope (or make setup-dev)"
        ) from None
    if args.nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {args.nproc}")
    removed = claim_output_dir(cfg, overwrite=args.overwrite)
    if removed:
        say(removed)
    if args.nproc == 1:
        return train(cfg)

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={args.nproc}", "-m", "tunescope.train", args.config]
    for item in args.set or []:
        cmd += ["--set", item]
    for item in args.inject or []:
        cmd += ["--inject", item]
    if args.guard:
        cmd += ["--guard", args.guard]
    if args.resume:
        cmd += ["--resume"]
    return _run_ranks(cmd, cfg.output_dir)


def _run_ranks(cmd: list[str], out: str) -> int:
    """Run torchrun in its own session, so that Ctrl-C reaches only this
    process: the ranks are then asked to stop (they end their logs with
    run_end "interrupted" and exit quietly) and one line says so, instead of
    every rank's traceback and torchrun's warnings."""
    import signal
    import subprocess

    import psutil

    env = {**os.environ, "TUNESCOPE_LAUNCHER": "1"}
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        error(
            f"interrupted: every rank stopped; the log was kept ({out}/events/) "
            "and the run marked interrupted"
        )
        return ExitCode.INTERRUPTED
