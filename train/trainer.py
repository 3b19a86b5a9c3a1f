"""The bundled trainer: LoRA, QLoRA, full and freeze fine-tuning that writes
tunescope event logs. Read it top to bottom: config, setup, data, model, train.

    tunescope train fixtures/configs/lora.yaml --set lr=1e-3 --inject lr_spike@120
    torchrun --nproc_per_node 2 -m tunescope.train fixtures/configs/lora.yaml

The loop is transformers' ``Trainer`` (AdamW, warmup + schedule, clipping,
accumulation, mixed precision, checkpoints and exact resume); the logging is
:class:`~tunescope.train.callback.TunescopeCallback`, the same callback anyone
can add to their own ``Trainer``; faults come from :mod:`tunescope.train.faults`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import types
import typing
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
    """Rank-stabilised LoRA scaling (alpha / sqrt(r))."""
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
    """Turn a YAML value or a --set string into the field's type."""
    if not where.endswith(":"):
        where = f"{where}:"
    if where == "--set:":
        where = "--set"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is dict:
        if isinstance(raw, str) and raw.startswith("{"):
            import yaml

            raw = yaml.safe_load(raw)
        if not isinstance(raw, dict):
            raise ValueError(f"{where} {name}: expected a mapping, got {raw!r}")
        return dict(raw)
    if origin in (typing.Union, types.UnionType):
        is_null = raw is None or (isinstance(raw, str) and raw.lower() in ("null", "none", "~"))
        if is_null and type(None) in args:
            return None
        listy = isinstance(raw, list) or (isinstance(raw, str) and raw.startswith("["))
        mappy = isinstance(raw, dict) or (isinstance(raw, str) and raw.startswith("{"))
        first = list if listy else dict if mappy else None
        for a in sorted(args, key=lambda a: typing.get_origin(a) is not first if first else 0):
            if a is type(None):
                continue
            try:
                return _coerce(name, a, raw, where)
            except ValueError:
                continue
        raise ValueError(f"{where} {name}: cannot use {raw!r}")
    if origin is list:
        if isinstance(raw, str):
            import yaml

            val = yaml.safe_load(raw) if raw.startswith("[") else raw.split(",")
            raw = val if isinstance(val, list) else [val]
        if not isinstance(raw, list):
            raise ValueError(f"{where} {name}: expected a list, got {raw!r}")
        return [str(x) for x in raw]
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("true", "yes", "1", "on"):
            return True
        if str(raw).lower() in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"{where} {name}: expected true or false, got {raw!r}")
    if tp is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(f"{where} {name}: expected an integer, got {raw!r}")
        try:
            return int(raw) if not isinstance(raw, str) else int(raw.strip())
        except ValueError:
            raise ValueError(f"{where} {name}: expected an integer, got {raw!r}") from None
    if tp is float:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{where} {name}: expected a number, got {raw!r}") from None
    if tp is str:
        if isinstance(raw, dict | list):
            raise ValueError(f"{where} {name}: expected text, got {raw!r}")
        return str(raw)
    return raw


def load_config(path: str | None, sets: list[str] = (), inject: list[str] = ()) -> TrainConfig:
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
            values[k] = _coerce(k, hints[k], v, path)
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


# ---- setup -------------------------------------------------------------------------


def _dist() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))


def _quiet_libraries() -> None:
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


# ---- model -------------------------------------------------------------------------


def check_environment(cfg: TrainConfig) -> None:
    """Refuse early (before the heavy imports) what this machine cannot run."""
    import torch

    from tunescope.errors import TrainError

    if cfg.method == "qlora":
        if not torch.cuda.is_available():
            raise TrainError(
                "method 'qlora' needs a CUDA GPU (4-bit bitsandbytes); use 'lora' on CPU"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TrainError(
                "method 'qlora' needs bitsandbytes: pip install bitsandbytes"
            ) from None
    if cfg.precision == "fp16" and not torch.cuda.is_available():
        raise TrainError("precision 'fp16' needs a CUDA GPU; use 'fp32' or 'bf16' on CPU")


def load_model(cfg: TrainConfig) -> tuple[Any, Any]:
    """(model, tokenizer) with the fine-tuning method applied."""
    import torch

    from tunescope.errors import TrainError
    from tunescope.train.data import BUILTIN_MODELS, ByteTokenizer, HFTokenizer, tiny_llama

    if cfg.model in BUILTIN_MODELS:
        model, tok = tiny_llama(cfg.seed), ByteTokenizer()
        if cfg.method == "qlora":
            raise TrainError(
                "method 'qlora' needs a pretrained model; the built-in tiny-llama is not quantisable"
            )
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs: dict[str, Any] = {}
        if cfg.method == "qlora":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
            kwargs["device_map"] = {"": _dist()[1]}
        try:
            tok = HFTokenizer(AutoTokenizer.from_pretrained(cfg.model))
            model = AutoModelForCausalLM.from_pretrained(cfg.model, **kwargs)
        except OSError as e:
            raise TrainError(
                f"cannot load model {cfg.model!r}: {e}. Use a local model directory, "
                "a hub id with network access, or 'tiny-llama'."
            ) from None

    if cfg.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if cfg.method == "qlora":
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=cfg.gradient_checkpointing
            )
        lcfg = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target,
            use_rslora=cfg.use_rslora,
            modules_to_save=cfg.lora_modules_to_save or None,
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, lcfg)
        except ValueError as e:
            raise TrainError(f"lora_target {cfg.lora_target!r}: {e}") from None
    elif cfg.method == "freeze":
        layers = _decoder_layers(model)
        n = min(cfg.freeze_trainable_layers, len(layers))
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in layers[len(layers) - n :]:
            for p in layer.parameters():
                p.requires_grad_(True)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method in ("lora", "freeze"):
            model.enable_input_require_grads()
    return model, tok


def _decoder_layers(model: Any) -> list[Any]:
    import torch

    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0:
            return list(mod)
    from tunescope.errors import TrainError

    raise TrainError("method 'freeze' could not find the model's decoder layers")


# ---- train -------------------------------------------------------------------------


def train(cfg: TrainConfig) -> int:
    """Run one training job (one rank under torchrun); returns an exit code."""
    check_environment(cfg)
    _quiet_libraries()
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    from tunescope.errors import TrainError
    from tunescope.train import faults as faults_mod
    from tunescope.train.callback import TunescopeCallback
    from tunescope.train.data import Collator, SFTDataset, read_records, split

    t_start = time.monotonic()
    rank, _local, world = _dist()
    if cfg.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.cpu_threads)
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)

    # data
    try:
        fmt, records = read_records(Path(cfg.data), cfg.data_format)
    except ValueError as e:
        raise TrainError(str(e)) from None
    train_recs, eval_recs = split(records, cfg.eval_fraction if cfg.eval_steps else 0.0, cfg.seed)

    # model
    model, tok = load_model(cfg)
    train_ds = SFTDataset(train_recs, fmt, tok, cfg.seq_len)
    eval_ds = SFTDataset(eval_recs, fmt, tok, cfg.seq_len) if eval_recs else None

    resume = cfg.resume_from_checkpoint
    if resume == "latest":
        ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        if not ckpts:
            raise TrainError(f"resume_from_checkpoint: latest: no checkpoint-N in {out}")
        resume = str(ckpts[-1])
    elif resume and not Path(resume).is_dir():
        raise TrainError(f"resume_from_checkpoint: {resume}: no such checkpoint directory")

    use_cuda = torch.cuda.is_available()
    show_bar = cfg.progress and rank == 0 and sys.stderr.isatty()
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=cfg.max_steps if cfg.max_steps else -1,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule,
        max_grad_norm=cfg.max_grad_norm,
        optim="adamw_torch",
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if eval_ds is not None else "no",
        eval_steps=cfg.eval_steps or None,
        logging_strategy="no",  # the callback logs every step; the Trainer's own logs stay off
        report_to=[],
        disable_tqdm=not show_bar,
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,  # keep sample_ids for the callback
        dataloader_num_workers=0,
        use_cpu=not use_cuda,
        ddp_backend=("nccl" if use_cuda else "gloo") if world > 1 else None,
        ddp_find_unused_parameters=False if world > 1 else None,
        ddp_broadcast_buffers=False,  # no buffer needs syncing: one collective less per step
        save_only_model=False,
        average_tokens_across_devices=False,
    )

    faults = faults_mod.parse_faults(cfg.inject)
    for f in faults:
        if f.kind in ("straggler", "nan") and f.rank is not None and f.rank >= world:
            raise TrainError(f"fault {f.spec}: rank {f.rank} does not exist (world size {world})")
    from tunescope.train.guard import Guard, SkipList

    guard = Guard(cfg.guard, can_rewind=True)
    # batches a guard rewind skipped, kept for any later resume of this run
    skips = SkipList.load(out) if resume else SkipList()
    extra: dict[str, Any] = {}
    if use_cuda:
        extra["device_memory_mb"] = torch.cuda.get_device_properties(0).total_memory / 1024**2
    if cfg.device_memory_mb:
        extra["device_memory_mb"] = cfg.device_memory_mb
    if guard.policy.active:
        extra["guard"] = guard.policy.to_json()
    fault_cb: Any = None
    first_record: dict[str, Any] | None = None
    from transformers.trainer_callback import PrinterCallback

    while True:  # one pass, or one more per guard rewind
        args.max_grad_norm = cfg.max_grad_norm  # the previous pass's callback took clipping over
        ts_cb = TunescopeCallback(
            out,
            cfg.run_name,
            config=cfg.to_dict(),
            faults=[f.to_json() for f in faults],
            webhook=cfg.webhook,
            guard=guard,
            extra_run_start=extra,
        )
        callbacks: list[Any] = []
        if faults and fault_cb is None:
            fault_cb = faults_mod.make_callback(faults, ts_cb, seed=cfg.seed + rank)
            callbacks.append(fault_cb)
        callbacks.append(ts_cb)
        if cfg.stop_at_step:
            callbacks.append(_stop_callback(cfg.stop_at_step))
        trainer = guarded_trainer(Trainer, skips)(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            data_collator=Collator(tok.pad_token_id),
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)  # stdout stays clean; the log has everything
        try:
            trainer.train(resume_from_checkpoint=resume)
        except KeyboardInterrupt:
            ts_cb.finish("interrupted", "KeyboardInterrupt")
            raise
        except Exception as e:
            ts_cb.finish("failed", f"{type(e).__name__}: {e}")
            raise
        first_record = first_record or ts_cb.first
        if guard.rewind is None:
            break
        # A guard rewind: the batches from the onset to the detection are never
        # trained again; injected faults were an incident of the pass that ended
        # (they model a transient failure, not a property of the run).
        r, guard.rewind = guard.rewind, None
        for s in range(r["onset"], r["step"] + 1):
            skips.items.update(trainer.positions.get(s, []))
        if rank == 0:
            skips.save(out)
        if fault_cb is not None:
            fault_cb.remove()
        resume = r["checkpoint"]
    if rank == 0:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
        ts_cb.first = first_record
        _summary(cfg, ts_cb, time.monotonic() - t_start, world, guard)
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if guard.stopped is not None:
        from tunescope.errors import ExitCode

        if rank == 0:
            print(
                f"tunescope: to resume: tunescope train CONFIG --set {guard.stopped['resume']}",
                file=sys.stderr,
            )
        return int(ExitCode.FINDINGS)
    return 0


def guarded_trainer(base: type, skips: Any) -> type:
    """``base`` (transformers' ``Trainer``) with exact data skipping for guard
    rewinds: micro-batches at the positions in ``skips`` are drawn and dropped,
    and a resume lands on the true position in the data stream (the Trainer
    alone would count skipped batches as trained). ``positions[step]`` records
    the (epoch, position) of each micro-batch a step trained."""

    class GuardedTrainer(base):  # type: ignore[misc, valid-type]
        positions: dict[int, list[tuple[int, int]]]

        def _run_epoch(self, model, epoch, train_dataloader, steps_in_epoch, **kw):  # type: ignore[no-untyped-def]
            if not hasattr(self, "positions"):
                self.positions = {}
            self._epoch, self._raw, self._until = epoch, 0, (epoch, 0)
            resumed = kw.get("resume_from_checkpoint") is not None
            if resumed and epoch == kw.get("epochs_trained") and not self.args.ignore_data_skip:
                self._raw = kw.get("steps_trained_in_current_epoch") or 0  # skipped by the Trainer
            if resumed and skips.items:
                kept = self.state.global_step * self.args.gradient_accumulation_steps
                self._until = skips.position_of(kept, steps_in_epoch)
            return super()._run_epoch(model, epoch, train_dataloader, steps_in_epoch, **kw)

        def set_initial_training_values(self, args, dataloader):  # type: ignore[no-untyped-def]
            values = list(super().set_initial_training_values(args, dataloader))
            if skips.items:  # skipped batches need that many more to reach max_steps
                per_epoch = max(1, len(dataloader))
                values[0] += -(-len(skips.items) // per_epoch)
            return tuple(values)

        def get_batch_samples(self, epoch_iterator, num_batches, device):  # type: ignore[no-untyped-def]
            out, where = [], []
            while len(out) < num_batches:
                try:
                    batch = next(epoch_iterator)
                except StopIteration:
                    break
                pos = (self._epoch, self._raw)
                self._raw += 1
                if pos < self._until or pos in skips.items:
                    continue
                out.append(batch)
                where.append(pos)
            step = self.state.global_step + 1
            self.positions[step] = where
            self.positions.pop(step - 20_000, None)  # a rewind never reaches that far back
            return out, self._get_num_items_in_batch(out, device)

    return GuardedTrainer


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
    did = f"; guard: {', '.join(acted)}" if acted else ""
    print(
        f"tunescope: trained {cfg.model} ({cfg.method}) for {cb.last_step} steps{ranks}{loss} "
        f"in {seconds:.0f}s{did}; log: {Path(cfg.output_dir) / 'events'}/",
        file=sys.stderr,
    )


def _stop_callback(step: int) -> Any:
    """A callback that stops training after ``step`` (the run ends 'interrupted')."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= step:
                control.should_training_stop = True

    return StopAt()


def _portable(value: Any) -> Any:
    """A path as logs record it: relative to the working directory when it lies
    inside it (a log copied to another machine names no one's home folder)."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    try:
        return str(Path(value).relative_to(Path.cwd()))
    except ValueError:
        return value


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
        print(f"tunescope: error: {e}", file=sys.stderr)
        return int(ConfigError.exit_code)
    try:
        return train(cfg)
    except TunescopeError as e:
        print(f"tunescope: error: {e}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        # the log already says "interrupted"; under `tunescope train --nproc`
        # the launcher reports it once, so a rank exits quietly (a non-zero
        # code would make torchrun print every rank's failure)
        if os.environ.get("TUNESCOPE_LAUNCHER"):
            return 0
        print("tunescope: interrupted", file=sys.stderr)
        return 130


def guard_sets(a: Any) -> list[str]:
    """``--set`` items with ``--guard NAME`` as ``guard=NAME`` (it wins)."""
    return [*(a.set or []), *([f"guard={a.guard}"] if getattr(a, "guard", None) else [])]


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
        "freeze_adapter, straggler:RANK:SECONDS, leak:MB_PER_STEP, warmup_noise[:FACTOR], kill@STEP",
    )
    p.add_argument(
        "--guard",
        choices=("report", "skip", "stop", "rewind"),
        help="act on findings while training (default report: only log): skip non-finite "
        "steps; stop: also checkpoint and stop on divergence; rewind: also rewind to a "
        "checkpoint before a divergence (needs save_steps); stop and rewind also checkpoint "
        "before a forecast out-of-memory",
    )
    if nproc:
        p.add_argument(
            "--nproc", type=int, default=1, metavar="N", help="ranks to run with torchrun (DDP)"
        )
