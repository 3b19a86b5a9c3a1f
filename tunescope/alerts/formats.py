"""Which payload format a webhook gets: chosen by name or from its host, and
built by that format's emitter."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any

from tunescope.alerts.dingtalk import dingtalk_payload
from tunescope.alerts.feishu import feishu_payload
from tunescope.alerts.json_format import json_payload
from tunescope.alerts.model import Alert
from tunescope.alerts.slack import slack_payload

FORMATS = ("slack", "feishu", "dingtalk", "json")

_BUILDERS: dict[str, Callable[[Alert], dict[str, Any]]] = {
    "slack": slack_payload,
    "feishu": feishu_payload,
    "dingtalk": dingtalk_payload,
    "json": json_payload,
}


def build_payload(alert: Alert, fmt: str) -> dict[str, Any]:
    """The JSON body of ``alert`` for one format (unsigned)."""
    try:
        return _BUILDERS[fmt](alert)
    except KeyError:
        raise ValueError(f"unknown alert format {fmt!r}; use one of {', '.join(FORMATS)}") from None


# ---- endpoints and requests ----------------------------------------------------------

_HOST_FORMATS = (
    ("hooks.slack.com", "slack"),
    ("open.feishu.cn", "feishu"),
    ("open.larksuite.com", "feishu"),
    ("oapi.dingtalk.com", "dingtalk"),
)


def detect_format(url: str) -> str:
    """The payload format a webhook URL's host expects; ``json`` when unknown."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    for suffix, fmt in _HOST_FORMATS:
        if host == suffix or host.endswith("." + suffix):
            return fmt
    return "json"
