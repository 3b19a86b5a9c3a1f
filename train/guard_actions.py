"""The guard's side of :class:`~tunescope.train.callback.TunescopeCallback`:
the per-step decision every rank agrees on before the optimizer step, and the
actions (skip, stop, rewind, checkpoint) taken on it after the step.

The policy and the live detector checks are :mod:`tunescope.train.guard`; this
module is where they touch the Trainer (its ``control``, optimizer, scheduler
and gradients). Every action is logged by the callback's ``_intervene``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tunescope.say import say
from tunescope.train.guard import Guard
from tunescope.train.watchdog import Watchdog, checkpoint_now

if TYPE_CHECKING:
    from tunescope.train.events import EventWriter


class GuardActions:
    """Mixed into ``TunescopeCallback``; uses its ``guard``, ``writer``,
    ``rank``, ``_norms``, ``_params`` and per-step state."""

    guard: Guard | None
    _watchdog: Watchdog | None = None
    # set by the callback's __init__ and on_train_begin
    writer: EventWriter | None
    rank: int
    run_dir: Path
    _params: list[torch.Tensor]
    _collective: bool
    _device: torch.device
    _idle_flags: torch.Tensor | None
    _norms: torch.Tensor | None
    _values: list[float] | None
    _agreed: list[float] | None
    _skipped: bool

    if TYPE_CHECKING:

        def _intervene(self, step: int, action: str, finding: str, **fields: Any) -> None: ...

    def _guard_decide(self, grad_norm: torch.Tensor, loss: torch.Tensor) -> None:
        """The guard's per-step decision, before the optimizer step.

        The step's metrics are read with the callback's one ``.tolist()``
        (moved here from ``on_step_end``: still one host-device sync per step)
        and the non-finite check is done on the host. Under DDP the flags of
        every rank (non-finite, and the requests of its own checks) are
        computed on the device and max-reduced first, in the same read: one
        small collective per step, and every rank reads the same decision."""
        g = self.guard
        assert g is not None and self._norms is not None
        if not self._collective:
            values = self._values = self._norms.tolist()  # the one sync
            bad = not (math.isfinite(values[0]) and math.isfinite(values[5]))
            agreed = self._agreed = [float(bad), *g.flags()]
        else:
            agreed = self._agreed_across_ranks(g, self._norms, grad_norm, loss)
        if agreed[0] > 0 and g.policy.nonfinite != "report":
            # skip: no gradient, no update (AdamW leaves moments and weights alone)
            for p in self._params:
                p.grad = None
            self._skipped = True

    def _agreed_across_ranks(
        self, g: Guard, norms: torch.Tensor, grad_norm: torch.Tensor, loss: torch.Tensor
    ) -> list[float]:
        dev = self._device
        bad = (~torch.isfinite(grad_norm) | ~torch.isfinite(loss)).float().reshape(1)
        if g.request or self._idle_flags is None:
            req = torch.tensor(g.flags(), device=dev)  # a host-to-device copy
            if not g.request:
                self._idle_flags = req
        else:
            req = self._idle_flags  # nothing asked: no copy at all
        flags = torch.cat([bad, req])
        dist = torch.distributed
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        values = torch.cat([norms, flags]).tolist()  # the one sync
        self._values, self._agreed = values[:7], values[7:]
        return self._agreed

    def _guard_begin(
        self, fields: dict[str, Any], args: Any, state: Any, kw: dict[str, Any]
    ) -> None:
        g = self.guard
        assert g is not None and self.writer is not None
        g.begin(self.writer.run, self.rank, fields, int(state.global_step), self.run_dir)
        if g.policy.hang == "checkpoint" and kw.get("model") is not None:
            p = g.policy
            out, model = Path(args.output_dir), kw["model"]
            opt, sched = kw.get("optimizer"), kw.get("lr_scheduler")

            def on_hang(step: int, waited: float, typical: float) -> None:
                self._hang_checkpoint(out, state, model, opt, sched, step, waited, typical)

            self._watchdog = Watchdog(p.hang_factor, p.hang_min_seconds, on_hang)
            self._watchdog.start(int(state.global_step))
        if g.pending_lr != 1.0:
            # a rewind: the checkpoint's scheduler and optimizer get the lower rate
            sched, opt = kw.get("lr_scheduler"), kw.get("optimizer")
            if sched is not None and hasattr(sched, "base_lrs"):
                sched.base_lrs = [b * g.pending_lr for b in sched.base_lrs]
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] *= g.pending_lr
                    if "initial_lr" in group:
                        group["initial_lr"] *= g.pending_lr
            g.pending_lr = 1.0

    def _guard_act(self, args: Any, state: Any, control: Any, record: dict[str, Any]) -> None:
        """Act on the flags every rank agreed on before this step's update, then
        run the live detector checks when they are due."""
        g = self.guard
        assert g is not None and self.writer is not None
        step = int(state.global_step)
        if self._watchdog is not None:
            self._watchdog.beat(step)
        g.add(step, time.time(), record)
        flags = self._agreed or [0.0, 0.0, 0.0, 0.0, -math.inf]
        if not self._skipped and not any(flags[:4]):  # nothing to do: the usual step
            if g.due(step):
                g.check()
            return
        out = Path(args.output_dir)
        ckpt_now = str(out / f"checkpoint-{step}")
        resume = f"resume_from_checkpoint={ckpt_now}"
        if self._skipped:
            escalate = g.note_skip(step)
            self._intervene(
                step,
                "skip",
                "TS001",
                steps=[step, step],
                reason=f"non-finite loss or grad norm at step {step} (on at least one rank); "
                "the optimizer step was skipped",
                skipped_total=g.skipped_total,
            )
            if escalate or g.policy.nonfinite == "stop":
                self._guard_stop(
                    control,
                    step,
                    "TS001",
                    ckpt_now,
                    resume,
                    (f"{len(g.skips)} non-finite steps within {g.policy.skip_window} steps"),
                )
                return
        elif flags[0] > 0 and g.policy.nonfinite == "stop":
            self._guard_stop(control, step, "TS001", ckpt_now, resume, "a non-finite step")
            return
        onset = int(-flags[4]) if math.isfinite(flags[4]) else step
        info = g.request_finding or {}
        reason = info.get("message") or "finding on another rank"
        if flags[2] > 0:  # rewind
            # the loss at the onset step is the first to show the bad update,
            # which was the step before it: rewind to a checkpoint before that one
            ckpt = g.last_checkpoint_before(out, onset - 1)
            if not g.can_rewind or ckpt is None or g.rewinds >= g.policy.max_rewinds:
                why = (
                    "rewind needs the bundled trainer"
                    if not g.can_rewind
                    else f"no checkpoint before the onset (step {onset})"
                    if ckpt is None
                    else f"already rewound {g.rewinds} time(s)"
                )
                self._guard_stop(control, step, "TS102", ckpt_now, resume, f"{reason} ({why})")
                return
            g.rewinds += 1
            g.lr_scale *= g.policy.lr_factor
            back = int(ckpt.name.rsplit("-", 1)[1])
            g.pending_lr = g.lr_scale / g.scale_at_save.get(back, 1.0)
            first = max(back + 1, onset - 1)  # the batches never trained again
            g.rewind = {"checkpoint": str(ckpt), "from_step": back, "onset": first, "step": step}
            self._intervene(
                step,
                "rewind",
                "TS102",
                steps=[first, step],
                reason=reason,
                checkpoint=str(ckpt),
                lr_factor=g.lr_scale,
                skipped_batches=(step - first + 1) * int(args.gradient_accumulation_steps or 1),
                rewinds=g.rewinds,
            )
            control.should_training_stop = True
            return
        if flags[1] > 0:  # stop
            self._guard_stop(control, step, "TS102", ckpt_now, resume, reason)
            return
        if flags[3] > 0 and not g.acted_memory:  # checkpoint before the forecast OOM
            g.acted_memory = True
            control.should_save = True
            self._intervene(
                step,
                "checkpoint",
                "TS401",
                steps=[step, step],
                reason=reason,
                checkpoint=ckpt_now,
                resume=resume,
            )
        g.request, g.request_finding = 0, None
        if g.due(step):
            g.check()

    def _guard_stop(
        self, control: Any, step: int, finding: str, ckpt: str, resume: str, reason: str
    ) -> None:
        g = self.guard
        assert g is not None and self.writer is not None
        control.should_save = True
        control.should_training_stop = True
        g.stopped = {"finding": finding, "step": step, "checkpoint": ckpt, "resume": resume}
        g.rewind = None
        self._intervene(
            step, "stop", finding, steps=[step, step], reason=reason, checkpoint=ckpt, resume=resume
        )
        if self.rank == 0:
            say(
                f"guard stopped the run at step {step} ({finding}: {reason}); "
                f"checkpoint {ckpt}; resume with {resume}"
            )

    def _hang_checkpoint(
        self,
        out: Path,
        state: Any,
        model: Any,
        opt: Any,
        sched: Any,
        step: int,
        waited: float,
        typical: float,
    ) -> None:
        """From the watchdog's thread, while the training thread is stuck:
        rank 0 checkpoints the last finished step; every rank logs it."""
        g = self.guard
        assert g is not None
        g.hangs += 1
        ckpt = out / f"checkpoint-{step}"
        if self.rank == 0:
            ckpt = checkpoint_now(out, step, model, opt, sched, state)
        reason = (
            f"no step for {waited:.0f}s, {waited / typical:.0f}x the recent step time "
            f"({typical:.2f}s): a rank is hung in step {step + 1}"
        )
        resume = f"resume_from_checkpoint={ckpt}"
        self._intervene(
            step + 1,
            "checkpoint",
            "TS301",
            steps=[step + 1, step + 1],
            reason=reason,
            checkpoint=str(ckpt),
            resume=resume,
        )
        if self.writer is not None:
            self.writer.flush(timeout=5)  # the process may never get further
        if self.rank == 0:
            say(f"guard: {reason}; checkpoint {ckpt}; resume with {resume}")
