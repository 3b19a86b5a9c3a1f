"""DingTalk: a robot ``markdown`` message (signed in the URL, see
:func:`tunescope.alerts.signing.dingtalk_sign`).

The Markdown body escapes ``&``, ``<`` and ``>`` as entities, so text from a
log cannot add HTML to it; the ``title`` (the notification line) is plain
text."""

from __future__ import annotations

from typing import Any

from tunescope.alerts.model import Alert, detail_lines, escape_markup, headline


def _md_escape(text: str) -> str:
    return escape_markup(text).replace("\n", "  \n")


def dingtalk_payload(alert: Alert) -> dict[str, Any]:
    f = alert.finding
    title = headline(alert)
    parts = [f"### {_md_escape(title)}", _md_escape(f.message)]
    if f.suggestion:
        parts.append(f"**Suggestion:** {_md_escape(f.suggestion)}")
    parts += [f"> {_md_escape(line)}" for line in detail_lines(alert)]
    parts.append("sent by tunescope")
    # DingTalk shows ``title`` in the notification; the body is Markdown.
    return {"msgtype": "markdown", "markdown": {"title": title[:100], "text": "\n\n".join(parts)}}
