"""Fault injection: make a real run fail in a known way, so detectors can be
judged against ground truth. Each fault acts on the real training step, and the
parsed list goes into ``run_start`` as ``faults``.

| spec | what it does | symptom |
|---|---|---|
| ``lr_spike@STEP[:FACTOR]`` | learning rate x FACTOR (default 20) from STEP on | divergence |
| ``bad_batch@STEP`` | the batch of STEP becomes random tokens | a one-step loss spike that recovers |
| ``nan@STEP[:RANK]`` | the loss of STEP is NaN (on RANK only, or every rank); the update poisons the weights | NaN from STEP on |
| ``freeze_adapter`` | adapter gradients are zeroed before every update | zero adapter gradients, no learning |
| ``straggler:RANK:SECONDS`` | RANK sleeps SECONDS in every forward | compute_time_s skew across ranks |
| ``straggler:RANK:xFACTOR`` | RANK's every forward takes FACTOR times as long (it sleeps FACTOR - 1 times its own forward time) | the same skew on a fast or a busy machine |
| ``slowdown@STEP[:xFACTOR]`` | from STEP on, every forward takes FACTOR (default 3) times as long, on every rank | a throughput drop that does not depend on machine speed |
| ``hang@STEP:SECONDS[:RANK]`` | RANK (or every rank) blocks SECONDS once, in the forward of STEP | no step for SECONDS: a hung rank |
| ``leak:MB_PER_STEP`` | keeps MB_PER_STEP of new tensors alive every step | rising memory floor |
| ``warmup_noise[:FACTOR]`` | learning rate x FACTOR (default 6) during warmup only | noisy warmup that recovers |
| ``kill@STEP`` | SIGKILL itself while writing step STEP's event | torn last line, no run_end |
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any

SPECS = (
    "lr_spike@STEP[:FACTOR]",
    "bad_batch@STEP",
    "nan@STEP[:RANK]",
    "freeze_adapter",
    "straggler:RANK:SECONDS|xFACTOR",
    "slowdown@STEP[:xFACTOR]",
    "hang@STEP:SECONDS[:RANK]",
    "leak:MB_PER_STEP",
    "warmup_noise[:FACTOR]",
    "kill@STEP",
)

_NUM = r"(\d+(?:\.\d+)?)"
_PATTERNS = {
    "lr_spike": re.compile(rf"lr_spike@(\d+)(?::{_NUM})?"),
    "bad_batch": re.compile(r"bad_batch@(\d+)"),
    "nan": re.compile(r"nan@(\d+)(?::(\d+))?"),
    "freeze_adapter": re.compile(r"freeze_adapter"),
    "straggler": re.compile(rf"straggler:(\d+):(x?){_NUM}"),
    "slowdown": re.compile(rf"slowdown@(\d+)(?::x{_NUM})?"),
    "hang": re.compile(rf"hang@(\d+):{_NUM}(?::(\d+))?"),
    "leak": re.compile(rf"leak:{_NUM}"),
    "warmup_noise": re.compile(rf"warmup_noise(?::{_NUM})?"),
    "kill": re.compile(r"kill@(\d+)"),
}


@dataclass(frozen=True)
class Fault:
    """One injected fault as recorded in ``run_start``."""

    kind: str
    spec: str
    step: int | None = None
    factor: float | None = None
    rank: int | None = None
    seconds: float | None = None
    mb_per_step: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def parse_fault(spec: str) -> Fault:
    """Parse one ``--inject`` value; ``ValueError`` with the accepted forms otherwise."""
    spec = spec.strip()
    kind = re.split(r"[@:]", spec, maxsplit=1)[0]
    pat = _PATTERNS.get(kind)
    m = pat.fullmatch(spec) if pat else None
    if m is None:
        raise ValueError(f"bad fault {spec!r}; expected one of: {', '.join(SPECS)}")
    g = m.groups()
    if kind in ("lr_spike", "bad_batch", "nan", "kill"):
        step = int(g[0])
        if step < 1:
            raise ValueError(f"bad fault {spec!r}: STEP must be >= 1")
        factor = (
            float(g[1]) if kind == "lr_spike" and g[1] else (20.0 if kind == "lr_spike" else None)
        )
        rank = int(g[1]) if kind == "nan" and g[1] is not None else None
        return Fault(kind, spec, step=step, factor=factor, rank=rank)
    if kind == "hang":
        step = int(g[0])
        if step < 1:
            raise ValueError(f"bad fault {spec!r}: STEP must be >= 1")
        rank = int(g[2]) if g[2] is not None else None
        return Fault(kind, spec, step=step, seconds=float(g[1]), rank=rank)
    if kind == "straggler":
        if g[1]:  # relative: a factor on the rank's own forward time
            if float(g[2]) <= 1:
                raise ValueError(f"bad fault {spec!r}: xFACTOR must be > 1")
            return Fault(kind, spec, rank=int(g[0]), factor=float(g[2]))
        return Fault(kind, spec, rank=int(g[0]), seconds=float(g[2]))
    if kind == "slowdown":
        step, factor = int(g[0]), float(g[1]) if g[1] else 3.0
        if step < 1 or factor <= 1:
            raise ValueError(f"bad fault {spec!r}: STEP must be >= 1 and xFACTOR > 1")
        return Fault(kind, spec, step=step, factor=factor)
    if kind == "leak":
        return Fault(kind, spec, mb_per_step=float(g[0]))
    if kind == "warmup_noise":
        return Fault(kind, spec, factor=float(g[0]) if g[0] else 6.0)
    return Fault(kind, spec)


def parse_faults(specs: list[str]) -> list[Fault]:
    return [parse_fault(s) for s in specs]


def make_callback(faults: list[Fault], tunescope_cb: Any, seed: int = 0) -> Any:
    """A ``TrainerCallback`` applying ``faults``; put it before the TunescopeCallback
    so that the log measures what the faults did."""
    import torch
    from transformers import TrainerCallback

    class FaultCallback(TrainerCallback):
        def __init__(self) -> None:
            self.faults = faults
            self.step = 0  # the optimizer step being computed (1-based)
            self.rank = 0
            self.leaked: list[torch.Tensor] = []
            self.gen = torch.Generator().manual_seed(seed + 7919)
            self.warmup = 0
            self.adapter: list[torch.Tensor] = []
            self.device = torch.device("cpu")
            self.hung: set[str] = set()  # hang faults already served (once each)
            self.t_forward = 0.0  # when the current forward began

        def of(self, kind: str) -> list[Fault]:
            return [f for f in self.faults if f.kind == kind]

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.rank = int(getattr(args, "process_index", 0) or 0)
            self.warmup = int(args.get_warmup_steps(state.max_steps)) if state.max_steps else 0
            if model is None:
                return
            self.hooks = [
                model.register_forward_pre_hook(self.pre_forward, with_kwargs=True),
                model.register_forward_hook(self.post_forward, with_kwargs=True),
            ]
            for name, p in model.named_parameters():
                if p.requires_grad:
                    self.device = p.device
                    if "lora_" in name:
                        self.adapter.append(p)
            if self.of("freeze_adapter") and not self.adapter:
                raise ValueError("freeze_adapter needs a LoRA model (method: lora or qlora)")

        def on_step_begin(self, args, state, control, **kw):
            self.step = state.global_step + 1

        def remove(self) -> None:
            """Take the faults off the model (after a guard rewind)."""
            for h in getattr(self, "hooks", []):
                h.remove()
            self.hooks = []
            self.faults = []
            self.leaked.clear()

        def pre_forward(self, module, a, kwargs):
            if not module.training:
                return None
            for f in self.of("straggler"):
                if f.rank == self.rank and f.seconds is not None:
                    time.sleep(f.seconds)
            self.t_forward = time.perf_counter()
            for f in self.of("hang"):
                if f.step == self.step and f.rank in (None, self.rank) and f.spec not in self.hung:
                    self.hung.add(f.spec)
                    time.sleep(f.seconds)
            if any(f.step == self.step for f in self.of("bad_batch")):
                kwargs = dict(kwargs)
                ids = kwargs["input_ids"]
                vocab = module.get_input_embeddings().num_embeddings
                noise = torch.randint(0, vocab, ids.shape, generator=self.gen).to(ids.device)
                kwargs["input_ids"] = noise
                if "labels" in kwargs:
                    lab = kwargs["labels"]
                    kwargs["labels"] = torch.where(lab == -100, lab, noise)
                return a, kwargs
            return None

        def post_forward(self, module, a, kwargs, output):
            if module.training:
                # relative slowness: sleep a multiple of this forward's own time, so
                # that the ratio to the healthy ranks (or steps) is the same however
                # busy the machine is
                factor = 1.0
                for f in self.of("straggler"):
                    if f.rank == self.rank and f.factor is not None:
                        factor *= f.factor
                for f in self.of("slowdown"):
                    if self.step >= f.step:
                        factor *= f.factor
                if factor > 1:
                    time.sleep((factor - 1) * (time.perf_counter() - self.t_forward))
            if module.training and any(
                f.step == self.step and f.rank in (None, self.rank) for f in self.of("nan")
            ):
                loss = output["loss"] * float("nan")
                output["loss"] = loss  # ModelOutput keeps the attribute in step
            return output

        def on_pre_optimizer_step(self, args, state, control, **kw):
            opt = kw.get("optimizer")
            factor = 1.0
            for f in self.of("lr_spike"):
                if self.step >= f.step:
                    factor *= f.factor
            for f in self.of("warmup_noise"):
                if self.step <= self.warmup:
                    factor *= f.factor
            if factor != 1.0 and opt is not None:
                # The scheduler sets each group's lr from its base every step, so
                # this multiplies only the update about to happen.
                for g in opt.param_groups:
                    g["lr"] = g["lr"] * factor
            if self.of("freeze_adapter"):
                for p in self.adapter:
                    if p.grad is not None:
                        p.grad.zero_()

        def on_step_end(self, args, state, control, **kw):
            for f in self.of("leak"):
                n = int(f.mb_per_step * 1024 * 1024 / 4)
                self.leaked.append(torch.ones(n, device=self.device))  # touched: resident
            for f in self.of("kill"):
                if state.global_step == f.step:
                    self.kill_mid_line(state.global_step)

        def kill_mid_line(self, step: int) -> None:
            w = tunescope_cb.writer
            w.flush()
            line = f'{{"v":1,"kind":"step","run":"{w.run}","rank":{w.rank},"step":{step},"loss":'
            with open(w.path, "ab") as fh:
                fh.write(line.encode())
                fh.flush()
                os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

    return FaultCallback()
