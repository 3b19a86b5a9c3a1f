"""The tunescope event schema: the single source of truth for event kinds and fields.

A log is one JSON object per line, one file per rank (``RUN/events/rank-N.jsonl``).
Every event carries the envelope fields; ``step`` events carry the canonical
metrics below; any other numeric field is kept as an extra metric, never dropped.
``NaN`` and ``Infinity`` are signal and are written and read as IEEE values.

``tunescope schema --json`` prints :func:`json_schema` so that other languages
can emit compatible logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

SCHEMA_VERSION = 1


class Kind(str, Enum):
    """Event kinds. Anything else is reported and skipped by ingest."""

    RUN_START = "run_start"
    STEP = "step"
    EVAL = "eval"
    CHECKPOINT = "checkpoint"
    RESUME = "resume"
    RUN_END = "run_end"
    INTERVENTION = "intervention"


KINDS: frozenset[str] = frozenset(k.value for k in Kind)


@dataclass(frozen=True)
class Field:
    """One field of the schema: its name, JSON type, unit and meaning."""

    name: str
    type: str  # "number" | "integer" | "string" | "object" | "array"
    unit: str
    doc: str


# Fields every event carries.
ENVELOPE: tuple[Field, ...] = (
    Field("v", "integer", "", "schema version; 1"),
    Field("kind", "string", "", "event kind: " + ", ".join(k.value for k in Kind)),
    Field("run", "string", "", "run name (informational; the run id is the directory)"),
    Field("rank", "integer", "", "global rank of the writing process; 0 when not distributed"),
    Field("step", "integer", "", "optimizer step (the first optimizer step is 1)"),
    Field("ts", "number", "s", "wall-clock time, seconds since the Unix epoch"),
)

# Canonical per-step metrics: the columns of the ``steps`` view, in order.
METRICS: tuple[Field, ...] = (
    Field("loss", "number", "", "training loss of this rank for this optimizer step"),
    Field("lr", "number", "", "learning rate used for this step"),
    Field("grad_norm", "number", "", "total L2 norm of trainable gradients, before clipping"),
    Field("grad_norm_adapter", "number", "", "L2 norm of adapter (LoRA) gradients"),
    Field("grad_norm_backbone", "number", "", "L2 norm of other trainable gradients"),
    Field("mem_allocated_mb", "number", "MiB", "memory allocated by tensors (CUDA) or RSS (CPU)"),
    Field("mem_reserved_mb", "number", "MiB", "memory reserved by the caching allocator"),
    Field("mem_peak_mb", "number", "MiB", "peak allocated memory during this step"),
    Field("step_time_s", "number", "s", "wall time of the whole optimizer step"),
    Field("data_time_s", "number", "s", "time spent waiting for the next batch"),
    Field("compute_time_s", "number", "s", "time before this rank waits on the others"),
    Field("tokens", "number", "", "tokens processed by this rank in this step"),
    Field("epoch", "number", "", "fractional epoch at the end of this step"),
)

METRIC_NAMES: tuple[str, ...] = tuple(f.name for f in METRICS)
ENVELOPE_NAMES: tuple[str, ...] = tuple(f.name for f in ENVELOPE)

# Non-numeric fields with a defined meaning, per kind.
STEP_EXTRAS: tuple[Field, ...] = (
    Field("sample_ids", "array", "", "ids of the samples in this rank's batch, when known"),
)

RUN_START_FIELDS: tuple[Field, ...] = (
    Field("config", "object", "", "the resolved training configuration"),
    Field("model", "string", "", "model name or path"),
    Field("finetuning_type", "string", "", "lora, qlora, full or freeze"),
    Field("lora_r", "integer", "", "LoRA rank"),
    Field("lora_alpha", "number", "", "LoRA alpha"),
    Field("lora_dropout", "number", "", "LoRA dropout"),
    Field("target_modules", "array", "", "LoRA target module names as configured"),
    Field("trainable_params", "integer", "", "number of trainable parameters"),
    Field("total_params", "integer", "", "number of parameters"),
    Field("adapted_modules", "integer", "", "number of modules that carry an adapter"),
    Field("expected_adapted_modules", "integer", "", "modules the targets should have matched"),
    Field("world_size", "integer", "", "number of ranks"),
    Field("devices", "array", "", "device names per local rank"),
    Field("host", "string", "", "host name"),
    Field("total_steps", "integer", "", "planned optimizer steps"),
    Field("warmup_steps", "integer", "", "learning-rate warmup steps"),
    Field("faults", "array", "", "faults injected on purpose (fault injection)"),
)

RUN_END_FIELDS: tuple[Field, ...] = (
    Field("status", "string", "", "completed, failed or interrupted"),
    Field("error", "string", "", "error text when the run failed"),
    Field("exit_code", "integer", "", "the process's exit code, when known"),
    Field(
        "log_tail",
        "array",
        "",
        "the console lines that show why the run ended, as [line number, text] pairs "
        "(a traceback's start and end, launcher and scheduler notices; at most 60 lines "
        "and 8 KiB, credentials masked)",
    ),
    Field("log_file", "string", "", "the file log_tail was read from"),
)

RESUME_FIELDS: tuple[Field, ...] = (
    Field("checkpoint", "string", "", "checkpoint path the run resumed from"),
    Field("from_step", "integer", "", "optimizer step stored in that checkpoint"),
)

INTERVENTION_FIELDS: tuple[Field, ...] = (
    Field("action", "string", "", "what the guard did: skip, stop, rewind or checkpoint"),
    Field("finding", "string", "", "the detector id whose finding caused it (TS001, TS102, TS401)"),
    Field("steps", "array", "", "first and last optimizer step affected"),
    Field("reason", "string", "", "the finding in one sentence"),
    Field("checkpoint", "string", "", "checkpoint saved (stop, checkpoint) or reloaded (rewind)"),
    Field("lr_factor", "number", "", "rewind: learning-rate factor applied from here on"),
    Field("skipped_batches", "integer", "", "rewind: micro-batches never trained again"),
)

CHECKPOINT_FIELDS: tuple[Field, ...] = (
    Field("path", "string", "", "where the checkpoint was written"),
)


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) describing one event line.

    JSON Schema cannot express ``NaN``/``Infinity`` tokens; emitters may write
    them for any number field (Python's ``json`` does by default).
    """

    def props(fields: tuple[Field, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields:
            spec: dict[str, Any] = {"type": [f.type, "null"], "description": f.doc}
            if f.unit:
                spec["description"] += f" ({f.unit})"
            out[f.name] = spec
        return out

    envelope = props(ENVELOPE)
    envelope["v"] = {"const": SCHEMA_VERSION, "description": "schema version"}
    envelope["kind"] = {"enum": sorted(KINDS), "description": "event kind"}

    def kind_rule(kind: Kind, fields: tuple[Field, ...], required: list[str]) -> dict[str, Any]:
        return {
            "if": {"properties": {"kind": {"const": kind.value}}},
            "then": {"properties": props(fields), "required": required},
        }

    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://tunescope.dev/schema/event-v{SCHEMA_VERSION}.json",
        "title": f"tunescope event (schema v{SCHEMA_VERSION})",
        "description": (
            "One JSON object per line in RUN/events/rank-N.jsonl. Unknown numeric "
            "fields are kept as extra metrics. NaN and Infinity are allowed."
        ),
        "type": "object",
        "required": ["v", "kind"],
        "properties": envelope,
        "additionalProperties": True,
        "allOf": [
            kind_rule(Kind.STEP, METRICS + STEP_EXTRAS, ["step"]),
            kind_rule(Kind.RUN_START, RUN_START_FIELDS, []),
            kind_rule(Kind.RUN_END, RUN_END_FIELDS, ["status"]),
            kind_rule(Kind.RESUME, RESUME_FIELDS, []),
            kind_rule(Kind.CHECKPOINT, CHECKPOINT_FIELDS, []),
            kind_rule(Kind.EVAL, (), ["step"]),
            kind_rule(Kind.INTERVENTION, INTERVENTION_FIELDS, ["step", "action"]),
        ],
    }
