"""Signatures: Feishu's and DingTalk's own schemes, and the ``json`` format's
HMAC headers (with the check a receiver makes)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Tunescope-Signature"
TIMESTAMP_HEADER = "X-Tunescope-Timestamp"
SIGNATURE_TOLERANCE_S = 300


def feishu_sign(secret: str, timestamp: int) -> str:
    """Feishu/Lark: base64(HMAC-SHA256(key=f"{timestamp}\\n{secret}", msg=b""))."""
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk: base64(HMAC-SHA256(key=secret, msg=f"{timestamp_ms}\\n{secret}")),
    before URL-encoding."""
    msg = f"{timestamp_ms}\n{secret}".encode()
    return base64.b64encode(hmac.new(secret.encode(), msg, hashlib.sha256).digest()).decode()


def json_signature(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256(secret, f"{timestamp}." + body)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_json_signature(
    secret: str,
    body: bytes,
    timestamp: str | int | None,
    signature: str | None,
    *,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """For receivers of the ``json`` format: True when ``signature`` (the
    ``X-Tunescope-Signature`` header) matches ``body`` and ``timestamp`` (the
    ``X-Tunescope-Timestamp`` header) is within ``tolerance_s`` of now."""
    if not signature or timestamp is None:
        return False
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(json_signature(secret, ts, body), signature)
