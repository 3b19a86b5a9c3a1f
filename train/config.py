"""The bundled trainer's configuration: :class:`TrainConfig` (a typed
dataclass, validated in ``__post_init__``), read from YAML with ``--set
KEY=VALUE`` overrides by :func:`load_config`, and the command-line arguments
``tunescope train`` and ``python -m tunescope.train`` share.

Torch-free: the CLI imports it to parse arguments without the ``[train]`` extra.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunescope.suggest import did_you_mean

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "fixtures" / "dataset" / "alpaca_tiny.jsonl"

METHODS = ("lora", "qlora", "full", "freeze")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")

# ---- config ----------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything a run needs; written into ``run_start`` and each checkpoint."""

    model: str = "tiny-llama"
    """'tiny-llama' (built in, random init, offline), a local HF model directory or a hub id."""
    data: str = str(DEFAULT_DATA)
    """Alpaca JSON/JSONL (instruction, input, output, optional system) or a plain-text file."""
    data_format: str = "auto"
    """'alpaca', 'text' or 'auto' (by file suffix: .json/.jsonl are Alpaca)."""
    output_dir: str = "runs/tiny-lora"
    """The run directory: events/ and checkpoint-N/ go here."""
    run_name: str | None = None
    """Run name written in each event (default: the output directory's name)."""
    method: str = "lora"
    """'lora', 'qlora' (4-bit, CUDA + bitsandbytes), 'full' or 'freeze' (last N layers)."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rslora)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    lora_target: str | list[str] = "all-linear"
    """Modules to adapt: 'all-linear' or a list of names (e.g. [q_proj, v_proj])."""
    use_rslora: bool = False
    """Rank-stabilised LoRA scaling (alpha / sqrt(r))."""
    lora_modules_to_save: list[str] = field(default_factory=list)
    """Modules trained in full next to the adapters (e.g. [embed_tokens, lm_head])."""
    freeze_trainable_layers: int = 1
    """With method 'freeze': how many of the last decoder layers are trained."""
    max_steps: int = 300
    """Optimizer steps to run (0: run `epochs` epochs)."""
    epochs: float = 1.0
    """Epochs when max_steps is 0."""
    batch_size: int = 8
    """Examples per micro-batch per rank."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    seq_len: int = 128
    """Tokens per example (longer ones are cut)."""
    lr: float = 3e-3
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 20
    """Linear warmup steps."""
    schedule: str = "cosine"
    """Decay after warmup: 'cosine', 'linear' or 'constant'."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this (0: no clipping)."""
    precision: str = "fp32"
    """'fp32', 'bf16' or 'fp16' (fp16 needs CUDA)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    save_steps: int = 0
    """Write a checkpoint every N steps (0: none)."""
    save_total_limit: int = 2
    """Keep at most this many checkpoints."""
    resume_from_checkpoint: str | None = None
    """A checkpoint directory, or 'latest' for the newest in output_dir."""
    eval_steps: int = 0
    """Evaluate on the held-out split every N steps (0: never)."""
    eval_fraction: float = 0.05
    """Fraction of the data held out for evaluation when eval_steps > 0."""
    seed: int = 0
    """Seed for model init, data order, dropout and faults."""
    stop_at_step: int = 0
    """Stop after this step as if interrupted (run_end 'interrupted'); for resume demos."""
    cpu_threads: int = 1
    """Torch threads per rank on CPU (0: torch's default); 1 is fastest for tiny models."""
    progress: bool = True
    """Show a progress bar on rank 0 when stderr is a terminal."""
    inject: list[str] = field(default_factory=list)
    """Faults to inject (see tunescope.train.faults), e.g. ['lr_spike@120:20']."""
    webhook: str | None = None
    """Webhook URL for alerts sent from the training process itself (rank 0):
    the first NaN/Inf and a sustained loss rise. Slack, Feishu/Lark and DingTalk
    URLs are recognised, anything else gets signed JSON
    (secret: TUNESCOPE_WEBHOOK_SECRET)."""

    guard: str | dict[str, Any] = "report"
    """What the training process does about findings (tunescope.train.guard):
    'report' (only log), 'skip', 'stop', 'rewind', or a mapping per kind of
    finding, e.g. {nonfinite: skip, divergence: rewind, memory: checkpoint,
    lr_factor: 0.5, max_rewinds: 2}. Rewind needs save_steps > 0."""
    device_memory_mb: float = 0.0
    """Device (or, on CPU, host) memory in MiB for the out-of-memory forecast
    (0: the CUDA device's size, unknown on CPU)."""

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(
            self.method in METHODS,
            f"method must be one of {', '.join(METHODS)}, not {self.method!r}",
        )
        need(
            self.schedule in SCHEDULES,
            f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}",
        )
        need(
            self.precision in PRECISIONS,
            f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}",
        )
        need(
            self.data_format in ("auto", "alpaca", "text"),
            "data_format must be auto, alpaca or text",
        )
        need(self.lora_r >= 1, f"lora_r must be >= 1, got {self.lora_r}")
        need(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        need(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        need(self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}")
        need(self.max_steps > 0 or self.epochs > 0, "set max_steps > 0 or epochs > 0")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}")
        need(self.seq_len >= 8, f"seq_len must be >= 8, got {self.seq_len}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        need(self.save_steps >= 0, f"save_steps must be >= 0, got {self.save_steps}")
        need(
            self.save_total_limit >= 1,
            f"save_total_limit must be >= 1, got {self.save_total_limit}",
        )
        need(self.eval_steps >= 0, f"eval_steps must be >= 0, got {self.eval_steps}")
        need(
            0 <= self.eval_fraction < 1,
            f"eval_fraction must be in [0, 1), got {self.eval_fraction}",
        )
        need(self.freeze_trainable_layers >= 1, "freeze_trainable_layers must be >= 1")
        need(self.cpu_threads >= 0, f"cpu_threads must be >= 0, got {self.cpu_threads}")
        need(self.stop_at_step >= 0, f"stop_at_step must be >= 0, got {self.stop_at_step}")
        if isinstance(self.lora_target, str) and self.lora_target != "all-linear":
            self.lora_target = [t.strip() for t in self.lora_target.split(",") if t.strip()]
        need(bool(self.lora_target), "lora_target must name at least one module or be all-linear")
        if isinstance(self.inject, str):
            self.inject = [self.inject]
        from tunescope.train.faults import parse_fault

        for spec in self.inject:
            parse_fault(spec)  # ValueError names the accepted forms
        from tunescope.train.guard import GuardPolicy

        policy = GuardPolicy.parse(self.guard)  # ValueError names the choices
        need(
            policy.divergence != "rewind" or self.save_steps > 0,
            "guard rewind needs checkpoints to rewind to: set save_steps > 0",
        )
        need(self.device_memory_mb >= 0, "device_memory_mb must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """The config as recorded in logs and checkpoints (a webhook URL holds a
        token: only its scheme and host are recorded)."""
        d = dataclasses.asdict(self)
        for key in ("data", "output_dir", "resume_from_checkpoint"):
            d[key] = _portable(d.get(key))
        if d.get("webhook"):
            from tunescope.alerts import redact_url

            d["webhook"] = redact_url(d["webhook"])
        return d


def _coerce(name: str, tp: Any, raw: Any, where: str) -> Any:
    """A YAML value or a ``--set`` string as the field's type (one coercer for
    the whole tool: :func:`tunescope.config.coerce`)."""
    from tunescope.config import coerce
    from tunescope.errors import ConfigError

    try:
        return coerce(raw, tp, f"{where} {name}", text=True)
    except ConfigError as e:
        raise ValueError(str(e)) from None


def load_config(
    path: str | None, sets: Sequence[str] = (), inject: Sequence[str] = ()
) -> TrainConfig:
    """Read a YAML config, apply ``key=value`` overrides and faults.

    Raises ``ValueError`` naming the file or the override and what is wrong."""
    import yaml

    values: dict[str, Any] = {}
    hints = typing.get_type_hints(TrainConfig)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"{path}: no such config file")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ValueError(f"{path}{line}: not valid YAML: {getattr(e, 'problem', e)}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        for k, v in loaded.items():
            if k not in names:
                raise ValueError(
                    f"{path}: unknown key {k!r}{did_you_mean(k, names)}; "
                    f"known keys: {', '.join(sorted(names))}"
                )
            values[k] = _coerce(k, hints[k], v, f"{path}:")
        # Relative data paths in a config file are relative to the file.
        if "data" in values and not Path(values["data"]).is_absolute():
            cand = (p.parent / values["data"]).resolve()
            if cand.exists() or not Path(values["data"]).exists():
                values["data"] = str(cand)
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        k = k.strip()
        if k not in names:
            raise ValueError(
                f"--set {k}: unknown key{did_you_mean(k, names)}; "
                f"known keys: {', '.join(sorted(names))}"
            )
        values[k] = _coerce(k, hints[k], v, "--set")
    if inject:
        values["inject"] = [*values.get("inject", []), *inject]
    return TrainConfig(**values)


def _portable(value: Any) -> Any:
    """A path as logs record it: relative to the working directory when it lies
    inside it (a log copied to another machine names no one's home folder)."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    try:
        return str(Path(value).relative_to(Path.cwd()))
    except ValueError:
        return value


def guard_sets(a: Any) -> list[str]:
    """``--set`` items with ``--guard NAME`` as ``guard=NAME`` and ``--resume``
    as ``resume_from_checkpoint=latest`` (they win)."""
    out = [*(a.set or []), *([f"guard={a.guard}"] if getattr(a, "guard", None) else [])]
    if getattr(a, "resume", False):
        out.append("resume_from_checkpoint=latest")
    return out


def claim_output_dir(cfg: TrainConfig, overwrite: bool = False) -> str | None:
    """Refuse to start a new run where a run's log already is: its events would
    be appended to the old ones as a second run in the same files. Resuming
    (``resume_from_checkpoint``) continues that log; ``overwrite`` removes the
    old log and checkpoints first and returns what it removed."""
    import shutil

    from tunescope.errors import TrainError

    out = Path(cfg.output_dir)
    events = out / "events"
    logs = sorted(events.glob("rank-*.jsonl")) if events.is_dir() else []
    if not logs or cfg.resume_from_checkpoint:
        return None
    if not overwrite:
        raise TrainError(
            f"{events}/ already holds a run's log; --resume continues it from its latest "
            "checkpoint, --overwrite starts it again (or --set output_dir=ANOTHER_DIR)"
        )
    ckpts = [p for p in out.glob("checkpoint-*") if p.is_dir()]
    shutil.rmtree(events)
    for p in ckpts:
        shutil.rmtree(p)
    return f"overwrote {out}: removed its events/" + (
        f" and {len(ckpts)} checkpoint(s)" if ckpts else ""
    )


def add_train_arguments(p: Any, nproc: bool = True, config_optional: bool = False) -> None:
    """The arguments of ``tunescope train`` and ``python -m tunescope.train``."""
    p.add_argument(
        "config",
        metavar="CONFIG.yaml",
        nargs="?" if config_optional else None,
        help="training config (YAML)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key (repeatable), e.g. --set lr=1e-3",
    )
    p.add_argument(
        "--inject",
        action="append",
        metavar="FAULT",
        help="inject a fault (repeatable): lr_spike@STEP[:FACTOR], bad_batch@STEP, nan@STEP[:RANK], "
        "freeze_adapter, straggler:RANK:SECONDS|xFACTOR, slowdown@STEP[:xFACTOR], "
        "hang@STEP:SECONDS[:RANK], leak:MB_PER_STEP, "
        "warmup_noise[:FACTOR], kill@STEP",
    )
    p.add_argument(
        "--guard",
        choices=("report", "skip", "stop", "rewind"),
        help="act on findings while training (default report: only log): skip non-finite "
        "steps; stop: also checkpoint and stop on divergence; rewind: also rewind to a "
        "checkpoint before a divergence (needs save_steps); stop and rewind also checkpoint "
        "before a forecast out-of-memory and when a rank hangs",
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in output_dir from its latest checkpoint "
        "(resume_from_checkpoint=latest)",
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="start again where output_dir already holds a run: its events/ and "
        "checkpoint-N/ are removed first (without --resume or --overwrite such a "
        "run is refused)",
    )
    if nproc:
        p.add_argument(
            "--nproc", type=int, default=1, metavar="N", help="ranks to run with torchrun (DDP)"
        )
