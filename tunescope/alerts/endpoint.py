"""An endpoint (URL, format, secret) and the signed HTTP request for one payload."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from tunescope.alerts.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    dingtalk_sign,
    feishu_sign,
    json_signature,
)
from tunescope.findings import jsonable
from tunescope.version import __version__

DELIVERY_HEADER = "X-Tunescope-Delivery"
EVENT_HEADER = "X-Tunescope-Event"


@dataclass(frozen=True)
class Endpoint:
    """One webhook: its URL (never printed), payload format and signing secret."""

    url: str = field(repr=False)
    format: str = "json"
    secret: str | None = field(default=None, repr=False)
    label: str = ""

    @property
    def id(self) -> str:
        """Identifies the endpoint in the outbox without storing its URL."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:16]


@dataclass
class HttpRequest:
    url: str = field(repr=False)
    body: bytes
    headers: dict[str, str]


def prepare(
    endpoint: Endpoint,
    payload: dict[str, Any],
    *,
    delivery_id: str | None = None,
    event: str | None = None,
    now: float | None = None,
) -> HttpRequest:
    """The signed HTTP request for ``payload`` (a fresh timestamp per attempt)."""
    now = time.time() if now is None else now
    url = endpoint.url
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": f"tunescope/{__version__}",
    }
    if delivery_id:
        headers[DELIVERY_HEADER] = delivery_id
    if event:
        headers[EVENT_HEADER] = event
    secret = endpoint.secret
    if secret and endpoint.format == "feishu":
        ts = int(now)
        payload = {"timestamp": str(ts), "sign": feishu_sign(secret, ts), **payload}
    body = json.dumps(jsonable(payload), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if secret and endpoint.format == "dingtalk":
        ts_ms = int(now * 1000)
        sign = urllib.parse.quote_plus(dingtalk_sign(secret, ts_ms))
        url += ("&" if urllib.parse.urlsplit(url).query else "?") + f"timestamp={ts_ms}&sign={sign}"
    if secret and endpoint.format == "json":
        ts = int(now)
        headers[TIMESTAMP_HEADER] = str(ts)
        headers[SIGNATURE_HEADER] = json_signature(secret, ts, body)
    return HttpRequest(url, body, headers)
