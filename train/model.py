"""The model side of the bundled trainer: what this machine can run, loading
a model with the fine-tuning method applied (LoRA, QLoRA, full, freeze), and
describing a model for ``run_start`` (parameter counts, LoRA settings, the
modules the LoRA targets should have matched).
"""

from __future__ import annotations

import os
from typing import Any

from tunescope.train.config import TrainConfig


def dist_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))


def quiet_libraries() -> None:
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


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

    tok: ByteTokenizer | HFTokenizer
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
            kwargs["device_map"] = {"": dist_env()[1]}
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


def count_expected_adapted(model: Any, targets: Any) -> int | None:
    """Modules that LoRA ``targets`` should match: Linear-like modules of the base
    model by name suffix (or regex), or every Linear but the output head for
    ``all-linear``. Compared with ``adapted_modules`` it shows targets that
    silently matched nothing."""
    if targets is None:
        return None
    import re

    import torch

    names = []
    for name, mod in model.named_modules():
        if "lora_" in name:
            continue
        if name.endswith(".base_layer"):
            name = name[: -len(".base_layer")]
        elif hasattr(mod, "base_layer"):
            continue  # the adapter wrapper; its base_layer is counted
        is_linear = isinstance(mod, torch.nn.Linear) or type(mod).__name__ in (
            "Linear4bit",
            "Linear8bitLt",
        )
        if is_linear:
            names.append(name)
    if isinstance(targets, str):
        if targets == "all-linear":
            return sum(1 for n in names if not n.endswith(("lm_head", "score")))
        return sum(1 for n in names if re.fullmatch(targets, n))
    wanted = set(targets)
    return sum(1 for n in names if n.rsplit(".", 1)[-1] in wanted or n in wanted)


def describe_model(model: Any) -> dict[str, Any]:
    """Model name, fine-tuning type, LoRA settings and parameter counts."""
    total = trainable = 0
    for p in model.parameters():
        n = p.numel()
        if hasattr(p, "quant_state"):  # bitsandbytes 4-bit packs two values per byte
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    cfg = getattr(model, "config", None)
    name = getattr(cfg, "name_or_path", None) or getattr(cfg, "_name_or_path", None)
    out: dict[str, Any] = {
        "model": name or type(model).__name__,
        "trainable_params": trainable,
        "total_params": total,
    }
    peft_cfg = getattr(model, "peft_config", None)
    if peft_cfg:
        pc = next(iter(peft_cfg.values()))
        targets = pc.target_modules
        if isinstance(targets, set):
            targets = sorted(targets)
        adapted = sum(1 for n, m in model.named_modules() if n.endswith("lora_A"))
        out.update(
            finetuning_type="lora",
            lora_r=getattr(pc, "r", None),
            lora_alpha=getattr(pc, "lora_alpha", None),
            lora_dropout=getattr(pc, "lora_dropout", None),
            target_modules=targets,
            adapted_modules=adapted,
            expected_adapted_modules=count_expected_adapted(model, targets),
        )
        if getattr(pc, "use_rslora", False):
            out["use_rslora"] = True
    else:
        out["finetuning_type"] = "full" if trainable == total else "freeze"
    return out


# ---- parameter groups for the gradient norms the callback logs -----------------


def param_group(name: str) -> str:
    """'A', 'B' or 'other' for LoRA A/B matrices, 'backbone' for the rest."""
    if "lora_A" in name or "lora_embedding_A" in name:
        return "A"
    if "lora_B" in name or "lora_embedding_B" in name:
        return "B"
    if "lora_" in name:
        return "other"
    return "backbone"


KIND_NAMES = ("A", "B", "other", "backbone")


def norm_weights(kinds: list[int], device: Any) -> Any:
    """A (5, n) 0/1 matrix: squared per-parameter norms -> squared total,
    adapter, backbone, lora_A and lora_B norms (indices into ``KIND_NAMES``)."""
    import torch

    rows = (
        (0, 1, 2, 3),  # total
        (0, 1, 2),  # adapter
        (3,),  # backbone
        (0,),  # lora_A
        (1,),  # lora_B
    )
    w = torch.zeros(5, len(kinds))
    for r, members in enumerate(rows):
        for j, k in enumerate(kinds):
            if k in members:
                w[r, j] = 1.0
    return w.to(device)
