"""The guard's side of :class:`~tunescope.train.callback.TunescopeCallback`:
the per-step decision every rank agrees on before the optimizer step, and the
actions (skip, stop, rewind, checkpoint) taken on it after the step.

The policy and the live detector checks are :mod:`tunescope.train.guard`; this
module is where they touch the Trainer (its ``control``, optimizer, scheduler
and gradients). The callback holds one :class:`GuardActions` and hands it what
it needs explicitly: the guard and a way to log an intervention when made,
the writer, rank, trainable parameters and device at train begin, and the
step's stacked metrics before each optimizer step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tunescope.say import say
from tunescope.train.guard import Guard
from tunescope.train.watchdog import Watchdog, checkpoint_now

if TYPE_CHECKING:
    from tunescope.train.events import EventWriter


class GuardActions:
    """What the guard does in one training process's callback.

    Args:
        guard: the policy and the live checks' state.
        run_dir: the run directory; the detectors' options come from the
            configuration file ``analyze`` would use for it.
        intervene: logs an action as an ``intervention`` event (and alerts
            it): ``intervene(step, action, finding, **fields)``.
    """

    def __init__(self, guard: Guard, run_dir: Path, intervene: Callable[..., None]) -> None:
        self.guard = guard
        self.run_dir = run_dir
        self.intervene = intervene
        self.watchdog: Watchdog | None = None
        # set at train begin (:meth:`begin`)
        self.writer: EventWriter | None = None
        self.rank = 0
        self.params: list[torch.Tensor] = []
        self.device = torch.device("cpu")
        self.collective = False  # several ranks: the flags are all-reduced
        self._idle_flags: torch.Tensor | None = None
        # per step (:meth:`new_step`)
        self.agreed: list[float] | None = None  # the flags, the same on every rank
        self.skipped = False

    def new_step(self) -> None:
        self.agreed = None
        self.skipped = False

    # ---- the hang watchdog, told of progress outside the steps -----------------------

    def beat(self) -> None:
        """Progress that is not a step (an evaluation, a save): not a hang."""
        if self.watchdog is not None:
            self.watchdog.beat()

    def hold(self) -> None:
        """A checkpoint or an evaluation follows this step: not a hang."""
        if self.watchdog is not None:
            self.watchdog.hold()

    def stop_watchdog(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()

    def decide(
        self, norms: torch.Tensor, grad_norm: torch.Tensor, loss: torch.Tensor
    ) -> list[float]:
        """The guard's per-step decision, before the optimizer step; returns
        the step's metrics (``norms`` read to the host).

        ``norms`` are read with the callback's one ``.tolist()`` (done here
        rather than in ``on_step_end``: still one host-device sync per step)
        and the non-finite check is done on the host. Under DDP the flags of
        every rank (non-finite, and the requests of its own checks) are
        computed on the device and max-reduced first, in the same read: one
        small collective per step, and every rank reads the same decision."""
        g = self.guard
        if not self.collective:
            values = norms.tolist()  # the one sync
            bad = not (math.isfinite(values[0]) and math.isfinite(values[5]))
            agreed = self.agreed = [float(bad), *g.flags()]
        else:
            values, agreed = self._agreed_across_ranks(g, norms, grad_norm, loss)
        if agreed[0] > 0 and g.policy.nonfinite != "report":
            # skip: no gradient, no update (AdamW leaves moments and weights alone)
            for p in self.params:
                p.grad = None
            self.skipped = True
        return values

    def _agreed_across_ranks(
        self, g: Guard, norms: torch.Tensor, grad_norm: torch.Tensor, loss: torch.Tensor
    ) -> tuple[list[float], list[float]]:
        dev = self.device
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
        self.agreed = values[7:]
        return values[:7], self.agreed

    def begin(
        self,
        writer: EventWriter,
        rank: int,
        params: list[torch.Tensor],
        device: torch.device,
        fields: dict[str, Any],
        args: Any,
        state: Any,
        kw: dict[str, Any],
    ) -> None:
        """Training (re)starts: this rank's writer, rank, trainable parameters
        (the gradients a skip drops) and device; ``fields``: its ``run_start``;
        ``kw``: the Trainer's ``model``, ``optimizer`` and ``lr_scheduler``."""
        self.writer, self.rank, self.params, self.device = writer, rank, params, device
        dist = torch.distributed
        self.collective = bool(
            dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        )
        g = self.guard
        g.begin(writer.run, rank, fields, int(state.global_step), self.run_dir)
        if g.policy.hang == "checkpoint" and kw.get("model") is not None:
            p = g.policy
            out, model = Path(args.output_dir), kw["model"]
            opt, sched = kw.get("optimizer"), kw.get("lr_scheduler")

            def on_hang(step: int, waited: float, typical: float) -> None:
                self._hang_checkpoint(out, state, model, opt, sched, step, waited, typical)

            self.watchdog = Watchdog(p.hang_factor, p.hang_min_seconds, on_hang)
            self.watchdog.start(int(state.global_step))
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

    def act(self, args: Any, state: Any, control: Any, record: dict[str, Any]) -> None:
        """Act on the flags every rank agreed on before this step's update, then
        run the live detector checks when they are due."""
        g = self.guard
        step = int(state.global_step)
        if self.watchdog is not None:
            self.watchdog.beat(step)
        g.add(step, time.time(), record)
        flags = self.agreed or [0.0, 0.0, 0.0, 0.0, -math.inf]
        if not self.skipped and not any(flags[:4]):  # nothing to do: the usual step
            if g.due(step):
                g.check()
            return
        out = Path(args.output_dir)
        ckpt_now = str(out / f"checkpoint-{step}")
        resume = f"resume_from_checkpoint={ckpt_now}"
        if self.skipped:
            escalate = g.note_skip(step)
            self.intervene(
                step,
                "skip",
                "TS001",
                steps=[step, step],
                reason=f"non-finite loss or grad norm at step {step} (on at least one rank); "
                "the optimizer step was skipped",
                skipped_total=g.skipped_total,
            )
            if escalate or g.policy.nonfinite == "stop":
                self._stop(
                    control,
                    step,
                    "TS001",
                    ckpt_now,
                    resume,
                    (f"{len(g.skips)} non-finite steps within {g.policy.skip_window} steps"),
                )
                return
        elif flags[0] > 0 and g.policy.nonfinite == "stop":
            self._stop(control, step, "TS001", ckpt_now, resume, "a non-finite step")
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
                self._stop(control, step, "TS102", ckpt_now, resume, f"{reason} ({why})")
                return
            g.rewinds += 1
            g.lr_scale *= g.policy.lr_factor
            back = int(ckpt.name.rsplit("-", 1)[1])
            g.pending_lr = g.lr_scale / g.scale_at_save.get(back, 1.0)
            first = max(back + 1, onset - 1)  # the batches never trained again
            g.rewind = {"checkpoint": str(ckpt), "from_step": back, "onset": first, "step": step}
            self.intervene(
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
            self._stop(control, step, "TS102", ckpt_now, resume, reason)
            return
        if flags[3] > 0 and not g.acted_memory:  # checkpoint before the forecast OOM
            g.acted_memory = True
            control.should_save = True
            self.intervene(
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

    def _stop(
        self, control: Any, step: int, finding: str, ckpt: str, resume: str, reason: str
    ) -> None:
        g = self.guard
        control.should_save = True
        control.should_training_stop = True
        g.stopped = {"finding": finding, "step": step, "checkpoint": ckpt, "resume": resume}
        g.rewind = None
        self.intervene(
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
        g.hangs += 1
        ckpt = out / f"checkpoint-{step}"
        if self.rank == 0:
            ckpt = checkpoint_now(out, step, model, opt, sched, state)
        reason = (
            f"no step for {waited:.0f}s, {waited / typical:.0f}x the recent step time "
            f"({typical:.2f}s): a rank is hung in step {step + 1}"
        )
        resume = f"resume_from_checkpoint={ckpt}"
        self.intervene(
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
