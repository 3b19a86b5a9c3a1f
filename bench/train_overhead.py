"""What TunescopeCallback costs a training step, measured against a baseline in the same run.

    python bench/train_overhead.py [--steps 60] [--repeats 5]

Three variants of the same tiny-model run (seeded, CPU, one thread), interleaved:

- baseline: transformers' Trainer with ``report_to=[]`` and ``logging_steps=1``;
- callback: the same plus ``TunescopeCallback``;
- guard: the same plus ``TunescopeCallback(guard="stop")`` (the non-finite
  check every step, the live TS102 and TS401 checks every 25 steps).

It prints the per-step wall time of each (median over repeats), the overhead
ratios (callback against the baseline, guard against the callback), the
callback's own time per step (time inside its methods and hooks, which does
not depend on machine noise) with and without the guard, and the EventWriter's
cost per event (on the caller, and end to end including the background write).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_trainer(out: Path, steps: int, callbacks: list) -> object:
    from transformers import Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from tunescope.train.data import ByteTokenizer, Collator, SFTDataset, read_records, tiny_llama
    from tunescope.train.trainer import DEFAULT_DATA

    hf_logging.set_verbosity_error()
    model = tiny_llama(seed=0)
    fmt, recs = read_records(DEFAULT_DATA, "auto")
    tok = ByteTokenizer()
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        max_grad_norm=1.0,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=SFTDataset(recs, fmt, tok, 128),
        data_collator=Collator(tok.pad_token_id),
        callbacks=callbacks,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the same in both variants: keep stdout clean
    return trainer


def timed_callback_class() -> type:
    """TunescopeCallback that adds up the time spent in its own code."""
    from tunescope.train.callback import TunescopeCallback

    names = [
        "on_step_begin",
        "on_pre_optimizer_step",
        "on_optimizer_step",
        "on_step_end",
        "on_log",
        "_pre_forward",
        "_post_forward",
        "_grad_ready",
    ]

    def wrap(name: str):
        inner = getattr(TunescopeCallback, name)

        def method(self, *a, **kw):
            t = time.thread_time()  # CPU time of this thread: not inflated by other processes
            try:
                return inner(self, *a, **kw)
            finally:
                self.self_time += time.thread_time() - t

        return method

    return type("TimedCallback", (TunescopeCallback,), {n: wrap(n) for n in names})


def probe_class() -> type:
    """Clocks at the end of step WARM and of the last step: the steady-state
    per-step cost, without the one-time work at the start and the end of a run
    (for the callback: opening the log, run_start, the final Parquet copy)."""
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self, warm: int) -> None:
            self.warm = warm
            self.marks: list[tuple[float, float]] = []

        def on_step_end(self, args, state, control, **kw):
            if state.global_step in (self.warm, state.max_steps):
                self.marks.append((time.perf_counter(), time.process_time()))

    return Probe


def run_once(variant: str, steps: int, tmp: Path, i: int) -> tuple[float, float, float, float]:
    """Steady-state (wall s/step, process CPU s/step, callback CPU s/step,
    guard's live-check CPU s/step).

    Process CPU time counts every thread of this process (the writer thread too)
    and not the other processes on the machine, so it stays meaningful on a busy
    machine where wall time is mostly noise."""
    warm = 5
    probe = probe_class()(warm)
    callbacks: list = [probe]
    cb = None
    if variant in ("callback", "guard"):
        guard = "stop" if variant == "guard" else None
        cb = timed_callback_class()(tmp / f"run-{i}", guard=guard)
        cb.self_time = 0.0
        callbacks.append(cb)
    trainer = make_trainer(tmp / f"out-{i}", steps, callbacks)
    trainer.train()
    (w0, c0), (w1, c1) = probe.marks
    n = steps - warm
    checks = cb.guard.check_seconds / steps if cb is not None and cb.guard is not None else 0.0
    return (w1 - w0) / n, (c1 - c0) / n, (cb.self_time / steps if cb else 0.0), checks


def writer_cost(n: int, tmp: Path) -> tuple[float, float, float]:
    """Per step event: (caller-thread CPU s, end-to-end wall s, end-to-end process CPU s);
    end to end = queued, encoded, written and flushed by the writer thread."""
    from tunescope.train.events import EventWriter

    rec = {
        "loss": 2.31,
        "lr": 1e-4,
        "grad_norm": 0.9,
        "grad_norm_adapter": 0.8,
        "grad_norm_backbone": 0.1,
        "grad_norm_lora_A": 0.3,
        "grad_norm_lora_B": 0.7,
        "mem_allocated_mb": 460.0,
        "step_time_s": 0.08,
        "data_time_s": 0.001,
        "compute_time_s": 0.07,
        "tokens": 700,
        "epoch": 0.5,
        "sample_ids": [1, 2, 3, 4, 5, 6, 7, 8],
    }
    w = EventWriter(tmp / "writer", rank=0, block_when_full=True)
    t0, c0 = time.perf_counter(), time.process_time()
    caller = 0.0
    for i in range(n):
        t = time.thread_time()
        w.step(step=i + 1, **rec)
        caller += time.thread_time() - t
    w.flush()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    w.close()
    return caller / n, wall / n, cpu / n


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--events", type=int, default=20000)
    a = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        run_once("callback", 8, tmp, -1)  # warm-up: imports, allocator, caches
        names = ("baseline", "callback", "guard")
        wall: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        self_times: dict[str, list[float]] = {n: [] for n in names}
        checks: list[float] = []
        for r in range(a.repeats):
            order = names[r % 3 :] + names[: r % 3]  # rotated: no variant always first
            for j, variant in enumerate(order):
                w, c, self_t, chk = run_once(variant, a.steps, tmp, 3 * r + j)
                if variant == "guard":
                    checks.append(chk)
                wall[variant].append(w)
                cpu[variant].append(c)
                self_times[variant].append(self_t)
        caller, e2e_wall, e2e_cpu = writer_cost(a.events, tmp)

    def ratio(d: dict[str, list[float]], b: str, o: str) -> tuple[float, float, float, float]:
        base, ours = statistics.median(d[b]), statistics.median(d[o])
        pairs = [y / x - 1 for x, y in zip(d[b], d[o], strict=True)]
        return base, ours, 100 * (ours / base - 1), 100 * statistics.median(pairs)

    print(f"tiny-llama, CPU, 1 thread, {a.steps} steps x {a.repeats} interleaved repeats")
    for b, o in (("baseline", "callback"), ("callback", "guard")):
        print(f"                         {b:>8}   {'+' + o:>9}   overhead (medians / paired)")
        for label, d in (("wall ms/step", wall), ("process CPU ms/step", cpu)):
            base, ours, over, paired = ratio(d, b, o)
            print(
                f"  {label:<22} {base * 1e3:8.2f}   {ours * 1e3:8.2f}   "
                f"{over:+6.2f} % / {paired:+6.2f} %"
            )
    base_cpu = statistics.median(cpu["baseline"])
    self_cb = statistics.median(self_times["callback"])
    self_guard = statistics.median(self_times["guard"])
    print(
        f"  callback's own CPU time: {self_cb * 1e3:.3f} ms/step "
        f"= {100 * self_cb / base_cpu:.2f} % of a step's CPU time"
    )
    print(
        f"  with the guard:          {self_guard * 1e3:.3f} ms/step; the guard's share "
        f"{(self_guard - self_cb) * 1e3:.3f} ms/step = "
        f"{100 * (self_guard - self_cb) / base_cpu:.2f} % of a step's CPU time"
    )
    chk = statistics.median(checks)
    print(
        f"    of which the live TS102/TS401 checks: {chk * 1e3:.3f} ms/step "
        f"= {100 * chk / base_cpu:.2f} %; the per-step flag: "
        f"{(self_guard - self_cb - chk) * 1e3:.3f} ms/step"
    )
    print(f"EventWriter, {a.events} step events:")
    print(f"  caller thread CPU:       {caller * 1e6:8.1f} us/event")
    print(f"  end to end, process CPU: {e2e_cpu * 1e6:8.1f} us/event (both threads)")
    print(f"  end to end, wall:        {e2e_wall * 1e6:8.1f} us/event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
