"""Feishu/Lark: a custom bot ``post`` message (signed in the body, see
:func:`tunescope.alerts.signing.feishu_sign`).

Every ``text`` element is escaped (``&``, ``<``, ``>`` as entities) and marked
``un_escape``, so Feishu shows the characters and never reads an ``<at>`` tag
in them; the title is plain text, which Feishu shows as it is."""

from __future__ import annotations

from typing import Any

from tunescope.alerts.model import Alert, detail_lines, escape_markup, headline


def _text(text: str) -> list[dict[str, Any]]:
    return [{"tag": "text", "text": escape_markup(text), "un_escape": True}]


def feishu_payload(alert: Alert) -> dict[str, Any]:
    f = alert.finding
    rows: list[list[dict[str, Any]]] = [_text(f.message)]
    if f.suggestion:
        rows.append(_text(f"Suggestion: {f.suggestion}"))
    rows += [_text(line) for line in detail_lines(alert)]
    rows.append(_text("sent by tunescope"))
    post = {"title": headline(alert), "content": rows}
    return {"msg_type": "post", "content": {"post": {"en_us": post, "zh_cn": post}}}
