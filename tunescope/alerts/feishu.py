"""Feishu/Lark: a custom bot ``post`` message (signed in the body, see
:func:`tunescope.alerts.signing.feishu_sign`)."""

from __future__ import annotations

from typing import Any

from tunescope.alerts.model import Alert, detail_lines, headline


def feishu_payload(alert: Alert) -> dict[str, Any]:
    f = alert.finding
    rows: list[list[dict[str, Any]]] = [[{"tag": "text", "text": f.message}]]
    if f.suggestion:
        rows.append([{"tag": "text", "text": f"Suggestion: {f.suggestion}"}])
    rows += [[{"tag": "text", "text": line}] for line in detail_lines(alert)]
    rows.append([{"tag": "text", "text": "sent by tunescope"}])
    post = {"title": headline(alert), "content": rows}
    return {"msg_type": "post", "content": {"post": {"en_us": post, "zh_cn": post}}}
