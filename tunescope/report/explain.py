"""``tunescope explain TSxxx``: a detector's docstring and its options table."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import json
import re
import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunescope.detectors.base import DetectorModule


def option_docs(options_cls: type) -> dict[str, str]:
    """The docstring written under each field of an ``Options`` dataclass."""
    try:
        source = textwrap.dedent(inspect.getsource(options_cls))
    except (OSError, TypeError):
        return {}
    tree = ast.parse(source)
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _default(f: dataclasses.Field) -> str:
    """The default as TOML would write it."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    return json.dumps(value)


def plain(text: str) -> str:
    """Docstring markup made terminal text: ``code`` loses its backticks."""
    return re.sub(r"``([^`]+)``", r"\1", text)


def summary(det: DetectorModule) -> str:
    """The detector's one-sentence summary: its docstring's first sentence,
    without the leading ``TSxxx name:``."""
    first = inspect.cleandoc(det.__doc__ or "").split("\n\n", 1)[0]
    text = " ".join(first.split())
    text = re.sub(rf"^{det.ID}\s+[^:]*:\s*", "", text)
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    return plain(m.group(1) if m else text)


def listing(detectors: list[DetectorModule]) -> str:
    """``tunescope explain`` without an id: one line per detector and its options."""
    lines = []
    pad = " " * 28
    for det in detectors:
        head = f"{det.ID}  {det.NAME:<21} "
        lines.extend(textwrap.wrap(summary(det), 79, initial_indent=head, subsequent_indent=pad))
        names = [f.name.replace("_", "-") for f in dataclasses.fields(det.Options)]
        if names:
            lines.extend(
                textwrap.wrap(
                    "options: " + ", ".join(names),
                    79,
                    initial_indent=pad,
                    subsequent_indent=pad + " " * 9,
                    break_on_hyphens=False,
                )
            )
        guard = getattr(det, "GUARD_ACTIONS", ())
        if guard:
            lines.append(f"{pad}guard: {', '.join(guard)}")
    return "\n".join(lines) + "\n"


def explain_text(det: DetectorModule) -> str:
    doc = plain(inspect.cleandoc(det.__doc__ or f"{det.ID} {det.NAME}"))
    lines = [
        doc,
        "",
        f"Options ([tool.tunescope.{det.ID}] in pyproject.toml, [{det.ID}] in tunescope.toml):",
    ]
    actions = getattr(det, "GUARD_ACTIONS", ())
    if actions:
        lines[1:1] = [
            "",
            "Guard actions (tunescope train --guard, TunescopeCallback(guard=...)): "
            + ", ".join(actions),
        ]
    docs = option_docs(det.Options)
    for f in dataclasses.fields(det.Options):
        lines.append(f"  {f.name.replace('_', '-')} = {_default(f)}")
        if f.name in docs:
            lines.extend("      " + w for w in textwrap.wrap(plain(docs[f.name]), 74))
    return "\n".join(lines) + "\n"
