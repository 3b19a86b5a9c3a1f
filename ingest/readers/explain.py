"""``tunescope ingest --explain FILE``: what each reader made of one file.

Every reader is asked in turn, as discovery asks them: the first that claims
the file reads it. The general reader always says what it inferred (the
shape, the names it mapped with their columns and confidence, the step's
source, the records) or why it refused; a read of the file by its reader
says how many rows it gave.
"""

from __future__ import annotations

from pathlib import Path

from tunescope.ingest.readers.general_shape import shape_of
from tunescope.ingest.readers.general_text import Shape
from tunescope.ingest.readers.telemetry import TelemetryReader
from tunescope.ingest.readers.vocabulary import CONFIGURED, HIGH


def shape_lines(shape: Shape) -> list[str]:
    """The general reader's view of a file, one fact a line."""
    if shape.kind == "none":
        return [f"  general: refused: {shape.reason}"]
    out = [
        f"  general: shape {shape.kind}"
        + (f" (delimiter {shape.delimiter!r})" if shape.delimiter else "")
    ]
    out.append(f"    records with a loss: {shape.records}")
    if shape.keys:
        out.append("    names:")
        for name, m in shape.keys.items():
            conf = (
                "configured"
                if m.confidence >= CONFIGURED
                else ("high" if m.confidence >= HIGH else "low")
            )
            if m.kind == "step":
                out.append(f"      {name} -> the step counter, {conf} confidence")
                continue
            what = {"eval": "eval metric", "metric": "metric"}.get(m.kind, "column")
            scale = (
                "" if m.scale == 1.0 else (" (inverted)" if m.scale == -1.0 else f" (x{m.scale:g})")
            )
            out.append(f"      {name} -> {what} {m.column}{scale}, {conf} confidence")
    if shape.reason is None:
        source = {"epoch": "the epochs, in order", "order": "the row order"}.get(
            shape.step or "", f"the {shape.step!r} counter"
        )
        out.append(f"    step from: {source}")
        out.append("    verdict: a training log")
    else:
        out.append(f"    refused: {shape.reason}")
    return out


def explain(path: Path) -> list[str]:
    """Lines that say which reader claims ``path``, why the others did not,
    and what the claiming reader read."""
    from tunescope.ingest.discover import READERS, unclaimed_hint

    lines = [f"{path}:"]
    claimed = None
    for reader in READERS:
        try:
            hit = reader.detect(path)
        except OSError as e:
            lines.append(f"  {reader.format}: cannot read ({e.strerror or e})")
            continue
        if reader.format == "general":
            lines.extend(shape_lines(shape_of(path)))
            if hit and claimed is None:
                claimed = reader
            continue
        if isinstance(reader, TelemetryReader):
            lines.append(reader.explain(path))
            if hit and claimed is None:
                claimed = reader
            continue
        if hit and claimed is None:
            claimed = reader
            lines.append(f"  {reader.format}: claims it")
        elif hit:
            lines.append(f"  {reader.format}: would claim it too (an earlier reader comes first)")
        else:
            lines.append(f"  {reader.format}: not its format")
    if claimed is None:
        hint = unclaimed_hint(path)
        lines.append("read by: no reader" + (f" ({hint})" if hint else ""))
        return lines
    lines.append(f"read by: {claimed.format}")
    if getattr(claimed, "parts", None) is not None:
        return lines
    try:
        result = claimed.read(path, None)
    except OSError as e:
        lines.append(f"  cannot read: {e.strerror or e}")
        return lines
    runs = 1 + len(result.subruns)
    steps = result.steps.num_rows + sum(r.steps.num_rows for _, r in result.subruns)
    metrics = result.metrics.num_rows + sum(r.metrics.num_rows for _, r in result.subruns)
    lines.append(
        f"  {runs} run{'s' if runs != 1 else ''}, {steps:,} step rows, {metrics:,} metric points"
        f", run dir {claimed.run_dir(path).name}"
    )
    for p in result.problems[:5]:
        lines.append(f"  skipped {p}")
    return lines
