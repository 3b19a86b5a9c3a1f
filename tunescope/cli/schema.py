"""``tunescope schema``: the event schema, as a field table or JSON Schema."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tunescope.errors import ExitCode


def add(sub: Any) -> None:
    p = sub.add_parser(
        "schema",
        help="print the event schema",
        description="Print the event schema (v1): a field table, or JSON Schema with --json.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON Schema document")
    p.set_defaults(handler=cmd_schema)


def cmd_schema(args: argparse.Namespace) -> int:
    from tunescope import schema

    if args.json:
        print(json.dumps(schema.json_schema(), indent=2))
        return ExitCode.OK
    print(
        f"tunescope event schema v{schema.SCHEMA_VERSION}: one JSON object per line, "
        "RUN/events/rank-N.jsonl"
    )
    sections = [
        ("every event", schema.ENVELOPE),
        ("step: canonical metrics", schema.METRICS + schema.STEP_EXTRAS),
        ("run_start", schema.RUN_START_FIELDS),
        ("resume", schema.RESUME_FIELDS),
        ("checkpoint", schema.CHECKPOINT_FIELDS),
        ("run_end", schema.RUN_END_FIELDS),
        ("intervention (the guard)", schema.INTERVENTION_FIELDS),
    ]
    for title, fields in sections:
        print(f"\n{title}:")
        for f in fields:
            unit = f" [{f.unit}]" if f.unit else ""
            print(f"  {f.name:<26} {f.type:<8} {f.doc}{unit}")
    print("\nAny other numeric field is kept as an extra metric (the metrics view).")
    return ExitCode.OK
