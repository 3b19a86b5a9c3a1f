"""Slack: an incoming-webhook message, ``text`` (the notification line) plus
``blocks`` (header, message, suggestion, run context). Other tools with
Slack-compatible incoming webhooks show at least the ``text``.

Slack reads ``&``, ``<`` and ``>`` as control characters in every text field
and decodes their entities for display: every text is escaped, so a run named
``<!channel>`` shows as that and pings no one."""

from __future__ import annotations

from typing import Any

from tunescope.alerts.model import Alert, detail_lines, escape_markup, headline


def slack_payload(alert: Alert) -> dict[str, Any]:
    f = alert.finding
    title = headline(alert)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": escape_markup(title)[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": escape_markup(f.message)[:3000]}},
    ]
    if f.suggestion:
        text = "*Suggestion:* " + escape_markup(f.suggestion)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}})
    context = " | ".join(escape_markup(x) for x in [*detail_lines(alert), "tunescope"])
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context[:3000]}]})
    return {"text": escape_markup(f"{title}: {f.message}"), "blocks": blocks}
