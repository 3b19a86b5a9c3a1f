"""The training configuration that foreign formats leave beside their logs.

A Hugging Face output directory holds ``training_args.json`` (when the script
saved one; ``training_args.bin`` is a pickle and is never loaded: unpickling
runs code), the model's ``config.json`` and PEFT's ``adapter_config.json``;
ms-swift writes ``args.json`` (``sft_args.json`` in 1.x), LLaMA-Factory
``training_args.yaml``. :func:`side_config` reads the ones present into one
flat table for the ``run_start`` event's ``config``, so that runs of these
formats can be grouped with their siblings and compared.

Only settings are read: ``all_results.json`` holds results, and the model's
``config.json`` adds its name only (its hundred architecture keys would bury
the settings a sweep changes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# in increasing precedence: a later file wins a key both hold
FILES = ("config.json", "adapter_config.json", "training_args.yaml", "sft_args.json", "args.json",
         "training_args.json")  # fmt: skip

# adapter_config.json keys -> the names the bundled trainer's config uses
_ADAPTER = {
    "base_model_name_or_path": "model",
    "r": "lora_r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "target_modules": "target_modules",
    "peft_type": "finetuning_type",
    "use_rslora": "use_rslora",
}
_MAX_BYTES = 1_000_000  # a settings file is a few kB; anything larger is not one


def _load(path: Path) -> dict[str, Any] | None:
    try:
        if path.stat().st_size > _MAX_BYTES:
            return None
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    import yaml

    try:
        data = yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
    except (ValueError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def side_config(run_dir: Path) -> dict[str, Any]:
    """The settings files found in ``run_dir``, merged (empty when none)."""
    out: dict[str, Any] = {}
    for name in FILES:
        data = _load(run_dir / name)
        if data is None:
            continue
        if name == "config.json":
            model = data.get("_name_or_path")
            if isinstance(model, str) and model:
                out.setdefault("model", model)
        elif name == "adapter_config.json":
            for key, canon in _ADAPTER.items():
                if data.get(key) is not None:
                    v = data[key]
                    out[canon] = v.lower() if key == "peft_type" and isinstance(v, str) else v
        else:
            out.update({k: v for k, v in data.items() if not k.startswith("_")})
    return out
