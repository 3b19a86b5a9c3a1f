"""``TunescopeCallback``: truthful per-rank, per-step event logs from a transformers ``Trainer``.

    trainer = Trainer(..., callbacks=[TunescopeCallback("runs/my-run")])

Every rank writes ``runs/my-run/events/rank-N.jsonl`` through :class:`EventWriter`.
Per optimizer step it records what this rank saw, not what the Trainer logs:

- ``loss``: this rank's token-weighted loss over the step's micro-batches, read
  from the model's output by a forward hook. Never averaged over logging steps
  or ranks and never NaN-filtered (the Trainer's ``logging_nan_inf_filter``
  hides NaN; a NaN here is the signal).
- ``grad_norm``, ``grad_norm_adapter``, ``grad_norm_backbone``,
  ``grad_norm_lora_A``, ``grad_norm_lora_B``: L2 norms before clipping and
  before the optimizer step. The Trainer clips before calling any callback, so
  the callback takes clipping over (same math: scale every gradient by
  ``min(1, max_norm / (norm + 1e-6))``) and sets ``args.max_grad_norm = 0``.
  All norms, the loss and the token count are stacked on the device and read
  with one ``.tolist()``: one host-device sync per step.
- ``lr`` actually used by the optimizer step (after any scheduler or fault).
- memory: CUDA allocated / reserved / peak (and ``num_alloc_retries``) on GPU,
  process RSS as ``mem_allocated_mb`` on CPU.
- ``step_time_s`` (previous step's end to this step's end, minus logging and
  checkpoint work done in between), ``data_time_s`` (waiting for the batch),
  ``compute_time_s`` (step start until the last gradient of this rank is ready:
  the time before this rank waits on the others in the gradient all-reduce,
  which is what exposes a straggler), ``tokens``, ``epoch``;
- ``sample_ids`` when the collator puts a ``sample_ids`` list in the batch (the
  callback removes it before the model's forward).

Events: ``run_start`` (resolved config, model, LoRA settings, parameter counts,
adapted modules, world size, devices, host, total and warmup steps, faults),
``eval``, ``checkpoint``, ``resume`` and ``run_end``.

Per-step work is in :meth:`TunescopeCallback.on_step_end` -> :meth:`_record_step`;
``on_step_record(step, record)`` is the single hook subclasses or later
features (alerting) can extend.
"""

from __future__ import annotations

import atexit
import math
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from tunescope.train.events import EventWriter
from tunescope.train.guard import Guard
from tunescope.train.guard_actions import GuardActions
from tunescope.train.model import KIND_NAMES, describe_model, norm_weights, param_group

_MB = 1024 * 1024


class TunescopeCallback(TrainerCallback):
    """Writes this rank's events for a transformers ``Trainer`` run.

    Args:
        run_dir: the run directory (events go to ``run_dir/events/rank-N.jsonl``).
        run: run name in each event (default: the directory name).
        config: the resolved configuration to put in ``run_start`` (default:
            the Trainer's arguments).
        faults: faults injected on purpose, recorded in ``run_start``.
        take_over_clipping: clip gradients in the callback so that logged norms
            are pre-clip (see the module docstring). Turned off automatically
            for DeepSpeed and FSDP, where the Trainer must clip.
        extra_run_start: more fields for ``run_start``.
        upload_to: a URL for this run (``s3://bucket/runs/RUN``): the local files
            are a spool, shipped there as the run trains (``EventWriter``).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        run: str | None = None,
        *,
        config: dict[str, Any] | None = None,
        faults: list[dict[str, Any]] | None = None,
        take_over_clipping: bool = True,
        extra_run_start: dict[str, Any] | None = None,
        webhook: str | list[str] | None = None,
        webhook_format: str = "auto",
        webhook_secret: str | None = None,
        guard: Any = None,
        upload_to: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.upload_to = upload_to  # a URL: the run's files are shipped there (EventWriter)
        # The guard acts on findings (skip a non-finite step, stop, rewind,
        # checkpoint before an OOM); None or "report": only log.
        if guard is not None and not isinstance(guard, Guard):
            guard = Guard(guard)
        self.guard: Guard | None = guard if guard is not None and guard.policy.active else None
        self.actions = (
            GuardActions(self.guard, self.run_dir, self._intervene)
            if self.guard is not None
            else None
        )
        # Alerts from the training process itself (rank 0): NaN/Inf and a
        # sustained loss rise, sent on a background thread, never blocking a step.
        self.webhook = webhook
        self.webhook_format = webhook_format
        self.webhook_secret = webhook_secret
        self.alerts: Any = None
        self.run = run
        self.config = config
        self.faults = list(faults or [])
        self.take_over_clipping = take_over_clipping
        self.extra_run_start = dict(extra_run_start or {})
        self.writer: EventWriter | None = None
        self.rank = 0
        self.max_grad_norm = 0.0
        self.ended = False
        self._hooks: list[Any] = []
        self._params: list[torch.Tensor] = []  # trainable parameters, in model order
        self._kinds: list[int] = []  # index into KIND_NAMES, per parameter
        self._weights: dict[tuple[int, ...], torch.Tensor] = {}
        self._optimizer: Any = None
        self._device = torch.device("cpu")
        self._cuda = False
        self._proc: Any = None
        self._error: str | None = None
        self._exit_hooks = False
        self.first: dict[str, Any] | None = None  # the first and the latest step record
        self.last: dict[str, Any] | None = None
        self.last_step = 0
        self._reset_step()
        self._t_mark = time.perf_counter()

    # ---- per-step state --------------------------------------------------------

    def _reset_step(self) -> None:
        self._loss_sum: torch.Tensor | None = None  # sum of token losses (on device)
        self._loss_n: torch.Tensor | None = None  # tokens that carry a label
        self._tokens: torch.Tensor | None = None
        self._sample_ids: list[Any] = []
        self._t_begin = 0.0
        self._t_grad = 0.0
        self._data_time = 0.0
        self._norms: torch.Tensor | None = None
        self._have: set[str] = set()
        self._compute_time: float | None = None
        self._lr: float | None = None
        self._values: list[float] | None = None  # the step's one device read
        if self.actions is not None:
            self.actions.new_step()

    # ---- hooks on the model ------------------------------------------------------

    def _pre_forward(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if "sample_ids" not in kwargs:
            return None
        kwargs = dict(kwargs)
        ids = kwargs.pop("sample_ids")
        if module.training:
            self._sample_ids.extend(ids.tolist() if hasattr(ids, "tolist") else ids)
        return args, kwargs

    def _post_forward(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if not module.training or not torch.is_grad_enabled():
            return
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if loss is None and isinstance(output, tuple | list) and output:
            loss = output[0] if torch.is_tensor(output[0]) and output[0].ndim == 0 else None
        if loss is None:
            return
        loss = loss.detach().float()
        labels = kwargs.get("labels")
        n_items = kwargs.get("num_items_in_batch")
        if labels is not None and torch.is_tensor(labels):
            n_local = (labels[..., 1:] != -100).sum().float()
        else:
            n_local = torch.ones((), device=loss.device)
        # The model's loss is sum / num_items_in_batch when the Trainer passes it,
        # else the mean over this micro-batch: either way we get the token sum.
        weight = n_items if n_items is not None else n_local
        if torch.is_tensor(weight):
            weight = weight.to(loss.device).float()
        s = loss * weight
        n_local = n_local.to(loss.device)
        self._loss_sum = s if self._loss_sum is None else self._loss_sum + s
        self._loss_n = n_local if self._loss_n is None else self._loss_n + n_local
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids")
        tok = None
        if isinstance(mask, torch.Tensor):
            tok = mask.sum()
        elif isinstance(ids, torch.Tensor):
            tok = torch.tensor(ids.numel(), device=ids.device)
        if tok is not None:
            tok = tok.to(loss.device).float()
            self._tokens = tok if self._tokens is None else self._tokens + tok

    def _grad_ready(self, _param: Any) -> None:
        self._t_grad = time.perf_counter()

    # ---- Trainer events ------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        self.rank = int(getattr(args, "process_index", 0) or 0)
        self._optimizer = kw.get("optimizer")
        resumed = state.global_step > 0
        path = self.run_dir / "events" / f"rank-{self.rank}.jsonl"
        had_log = path.exists() and path.stat().st_size > 0
        self.writer = EventWriter(self.run_dir, self.run, rank=self.rank, upload_to=self.upload_to)
        self._install(args, model)
        self._cuda = self._device.type == "cuda"
        if not self._cuda:
            import psutil

            self._proc = psutil.Process()
        fields = self._run_start_fields(args, state, model)
        if not (resumed and had_log):
            self.writer.run_start(**fields)
        self._start_alerts(fields)
        if self.actions is not None:
            trainer = {**kw, "model": model}
            self.actions.begin(
                self.writer, self.rank, self._params, self._device, fields, args, state, trainer
            )
        if resumed:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.writer.resume(state.global_step, str(ckpt if ckpt.exists() else "unknown"))
        if not self._exit_hooks:
            self._exit_hooks = True
            atexit.register(self._atexit)
            self._chain_excepthook()
        self._t_mark = time.perf_counter()

    def _install(self, args: Any, model: Any) -> None:
        deepspeed_or_fsdp = bool(getattr(args, "deepspeed", None)) or bool(
            getattr(args, "fsdp", None)
        )
        if self.take_over_clipping and not deepspeed_or_fsdp and args.max_grad_norm:
            self.max_grad_norm = float(args.max_grad_norm)
            args.max_grad_norm = 0.0  # we clip in on_pre_optimizer_step, after measuring
        if model is None:
            return
        self._hooks.append(model.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
        self._hooks.append(model.register_forward_hook(self._post_forward, with_kwargs=True))
        for name, p in model.named_parameters():
            if p.requires_grad:
                self._params.append(p)
                self._kinds.append(KIND_NAMES.index(param_group(name)))
                self._device = p.device
        # A host-side timestamp when a gradient is final on this rank. Backward runs
        # in reverse model order, so the first trainable parameters are among the
        # last to get theirs: the latest stamp marks the end of this rank's
        # backward compute (before any wait in the all-reduce). A few hooks suffice.
        for p in self._params[:4]:
            self._hooks.append(p.register_post_accumulate_grad_hook(self._grad_ready))

    def _run_start_fields(self, args: Any, state: Any, model: Any) -> dict[str, Any]:
        fields: dict[str, Any] = describe_model(model) if model is not None else {}
        if self.config is not None:
            config = self.config
        else:
            config = {
                k: v
                for k, v in args.to_dict().items()
                if isinstance(v, str | int | float | bool | type(None))
            }
        if self.max_grad_norm:
            config = {**config, "max_grad_norm": self.max_grad_norm}
        max_steps = int(state.max_steps or 0)
        world = int(getattr(args, "world_size", 1) or 1)
        if self._device.type == "cuda":
            dev = torch.cuda.get_device_name(self._device)
        else:
            dev = str(self._device)
        fields.update(
            config=config,
            world_size=world,
            devices=[dev],
            host=socket.gethostname(),
            total_steps=max_steps,
            warmup_steps=int(args.get_warmup_steps(max_steps)) if max_steps else 0,
            logging_steps=1,
            per_rank=True,
            faults=self.faults,
        )
        fields.update(self.extra_run_start)
        return fields

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any):
        now = time.perf_counter()
        self._data_time = now - self._t_mark  # the Trainer fetched this step's batches
        self._t_begin = now
        self._t_grad = 0.0
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self._device)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any):
        """Measure the gradients (and clip them) before the optimizer sees them.

        A handful of device ops and no sync: one fused norm per gradient, then a
        cached 0/1 matrix sums their squares into the five reported norms."""
        t_ready = self._t_grad or time.perf_counter()
        self._compute_time = t_ready - self._t_begin
        grads, kinds = [], []
        for p, k in zip(self._params, self._kinds, strict=True):
            if p.grad is not None:
                grads.append(p.grad)
                kinds.append(k)
        dev = self._device
        if grads:
            norms = torch._foreach_norm(grads)
            if len({g.device for g in grads}) > 1:
                norms = [n.to(dev) for n in norms]
            sq = torch.stack(norms).float().square()
            key = tuple(kinds)
            w = self._weights.get(key)
            if w is None:
                w = self._weights[key] = norm_weights(kinds, dev)
            five = (w @ sq).sqrt()  # total, adapter, backbone, lora_A, lora_B
            if self.max_grad_norm:
                # The same rule as torch.nn.utils.clip_grad_norm_, without a sync.
                coef = torch.clamp(self.max_grad_norm / (five[0] + 1e-6), max=1.0)
                by_dev: dict[Any, list[torch.Tensor]] = {}
                for g in grads:
                    by_dev.setdefault(g.device, []).append(g)
                for d, gs in by_dev.items():
                    torch._foreach_mul_(gs, coef.to(d))
        else:
            five = torch.zeros(5, device=dev)
        nan = torch.full((), math.nan, device=dev)
        loss = self._loss_sum / self._loss_n if self._loss_sum is not None else nan
        tokens = self._tokens if self._tokens is not None else nan
        self._norms = torch.cat([five, torch.stack([loss.to(dev), tokens.to(dev)])])
        self._have = {KIND_NAMES[k] for k in kinds}
        if self.actions is not None:
            self._values = self.actions.decide(self._norms, five[0], loss.to(dev))

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any):
        opt = self._optimizer or kw.get("optimizer")
        if opt is not None:
            self._lr = float(opt.param_groups[0]["lr"])  # the rate this step used

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any):
        record = self._record_step(state)
        if record is not None:
            self.on_step_record(state.global_step, record)
            if self.actions is not None:
                self.actions.act(args, state, control, record)
        if self.actions is not None and (control.should_save or control.should_evaluate):
            self.actions.hold()  # a checkpoint or an evaluation follows: not a hang
        self._reset_step()
        self._t_mark = time.perf_counter()

    def _record_step(self, state: Any) -> dict[str, Any] | None:
        if self.writer is None:
            return None
        now = time.perf_counter()
        rec: dict[str, Any] = {}
        if self._norms is not None:
            values = self._values if self._values is not None else self._norms.tolist()
            total, adapter, backbone, a, b, loss, tokens = values  # the one sync
            rec["loss"] = loss
            if self._lr is not None:
                rec["lr"] = self._lr
            rec["grad_norm"] = total
            if self._have & {"A", "B", "other"}:
                rec["grad_norm_adapter"] = adapter
                rec["grad_norm_backbone"] = backbone
                rec["grad_norm_lora_A"] = a
                rec["grad_norm_lora_B"] = b
            else:
                rec["grad_norm_backbone"] = backbone
            if not math.isnan(tokens):
                rec["tokens"] = int(tokens)
        elif self._lr is not None:
            rec["lr"] = self._lr
        if self._cuda:
            dev = self._device
            rec["mem_allocated_mb"] = torch.cuda.memory_allocated(dev) / _MB
            rec["mem_reserved_mb"] = torch.cuda.memory_reserved(dev) / _MB
            rec["mem_peak_mb"] = torch.cuda.max_memory_allocated(dev) / _MB
            rec["num_alloc_retries"] = torch.cuda.memory_stats(dev).get("num_alloc_retries", 0)
        elif self._proc is not None:
            rec["mem_allocated_mb"] = self._proc.memory_info().rss / _MB
        rec["step_time_s"] = now - self._t_mark
        rec["data_time_s"] = self._data_time
        rec["compute_time_s"] = (
            self._compute_time if self._compute_time is not None else now - self._t_begin
        )
        if state.epoch is not None:
            rec["epoch"] = float(state.epoch)
        if self._sample_ids:
            rec["sample_ids"] = self._sample_ids
        self.writer.step(step=state.global_step, **rec)
        if self.first is None:
            self.first = rec
        self.last = rec
        self.last_step = state.global_step
        return rec

    def on_step_record(self, step: int, record: dict[str, Any]) -> None:
        """Called with each step's record after it is queued for writing; a
        place for per-step extensions. Feeds the live alert checks."""
        if self.alerts is not None:
            run = self.writer.run if self.writer is not None else str(self.run)
            self.alerts.on_step(
                run, self.rank, step, record.get("loss"), record.get("grad_norm"), record.get("lr")
            )

    def _start_alerts(self, fields: dict[str, Any]) -> None:
        if not self.webhook or self.rank != 0 or self.alerts is not None:
            return
        from tunescope.alerts import OUTBOX_NAME
        from tunescope.train.live_alerts import TrainingAlerts

        self.alerts = TrainingAlerts.for_webhook(
            self.webhook,
            format=self.webhook_format,
            secret=self.webhook_secret,
            outbox=self.run_dir / ".tunescope" / OUTBOX_NAME,
            start=fields,
            run_dir=self.run_dir,
        )

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kw: Any):
        if self.actions is not None:
            self.actions.beat()
        if self.writer is not None and metrics:
            vals = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
            self.writer.eval(state.global_step, **vals)
        self._t_mark = time.perf_counter()

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any):
        if self.actions is not None:
            self.actions.beat()  # a slow save is progress, not a hang
        if self.guard is not None:
            self.guard.scale_at_save[state.global_step] = self.guard.lr_scale
        if self.writer is not None:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.writer.checkpoint(state.global_step, str(ckpt))
            self.writer.compact()
        self._t_mark = time.perf_counter()

    def on_log(self, args: Any, state: Any, control: Any, **kw: Any):
        self._t_mark = time.perf_counter()

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any):
        if self.guard is not None and self.guard.rewind is not None:
            self.detach()  # the driver restarts from the checkpoint; the run goes on
            return
        done = state.max_steps and state.global_step >= state.max_steps
        extra: dict[str, Any] = (
            {"guard": self.guard.stopped} if self.guard and self.guard.stopped else {}
        )
        self.finish("completed" if done or not state.max_steps else "interrupted", **extra)

    def _intervene(self, step: int, action: str, finding: str, **fields: Any) -> None:
        """Log what the guard did as an ``intervention`` event (and, with a
        webhook, alert it from rank 0)."""
        assert self.writer is not None
        self.writer.intervention(step, action, finding, **fields)
        if self.alerts is not None:
            reason = str(fields.get("reason", ""))
            self.alerts.intervention(self.writer.run, self.rank, step, action, finding, reason)

    def detach(self) -> None:
        """Stop logging without ``run_end`` (the run continues in a new
        ``Trainer``, as after a guard rewind): hooks removed, log closed."""
        writer = self._end()
        if writer is not None:
            self._close(writer)

    # ---- ending ----------------------------------------------------------------------

    def finish(self, status: str, error: str | None = None, **fields: Any) -> None:
        """Write ``run_end`` and close the log (once). The bundled trainer calls
        this with ``failed`` and the error text when training raises."""
        writer = self._end()
        if writer is not None:
            writer.run_end(status, error, **fields)
            self._close(writer)

    def _end(self) -> Any:
        """Stop logging (once): the hooks go; the writer to close, or None when
        already ended."""
        if self.ended or self.writer is None:
            return None
        self.ended = True
        if self.actions is not None:
            self.actions.stop_watchdog()
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        return self.writer

    def _close(self, writer: Any) -> None:
        writer.close()
        if self.alerts is not None:
            self.alerts.close(timeout=5)

    def _atexit(self) -> None:
        if not self.ended and self.writer is not None:
            self.finish("failed" if self._error else "interrupted", self._error)

    def _chain_excepthook(self) -> None:
        previous = sys.excepthook

        def hook(tp: type[BaseException], value: BaseException, tb: Any) -> None:
            main = threading.current_thread() is threading.main_thread()
            if main and not issubclass(tp, KeyboardInterrupt):
                self._error = f"{tp.__name__}: {value}"
            previous(tp, value, tb)

        sys.excepthook = hook
