"""Slack: an incoming-webhook message, ``text`` (the notification line) plus
``blocks`` (header, message, suggestion, run context). Other tools with
Slack-compatible incoming webhooks show at least the ``text``."""

from __future__ import annotations

from typing import Any

from tunescope.alerts.model import Alert, detail_lines, headline


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(alert: Alert) -> dict[str, Any]:
    f = alert.finding
    title = headline(alert)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _slack_escape(f.message)[:3000]}},
    ]
    if f.suggestion:
        text = "*Suggestion:* " + _slack_escape(f.suggestion)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}})
    context = " | ".join(_slack_escape(x) for x in [*detail_lines(alert), "tunescope"])
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context[:3000]}]})
    return {"text": f"{title}: {f.message}", "blocks": blocks}
