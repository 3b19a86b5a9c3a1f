"""Delivery of one message, with retries: a timeout per request, exponential
backoff with jitter on 5xx, 429 and connection errors; other 4xx answers (and
Feishu/DingTalk "code"/"errcode" refusals) are refusals, not retried; a
redirect is never followed (it would drop the body)."""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunescope.alerts.endpoint import HttpRequest
from tunescope.alerts.redact import redact_url


@dataclass
class RetryPolicy:
    """How hard to try one delivery."""

    timeout: float = 10.0
    """Seconds to wait for one HTTP answer."""
    retries: int = 3
    """Retries after the first attempt, on 5xx, 429 and connection errors."""
    backoff: float = 1.0
    """Delay before the first retry; doubles for each further retry."""
    max_backoff: float = 30.0
    """Upper bound of one delay (also for a server's Retry-After)."""
    jitter: float = 0.5
    """Each delay is shortened by a random fraction up to this, so that many
    senders do not retry in lockstep."""

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")

    def delay(self, retry: int) -> float:
        base = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return base * (1 - self.jitter * random.random())


@dataclass
class Outcome:
    """How one delivery ended."""

    ok: bool
    status: int | None = None
    attempts: int = 0
    error: str = ""
    retryable: bool = False
    """True when it failed for a reason worth trying again later (5xx,
    connection error, interrupted); False for a refusal (4xx)."""
    seconds: float = 0.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib re-sends a POST answered 301, 302 or 303
    as a GET without its body (the alert would be lost while the GET's 200
    looked like a delivery). The 3xx itself comes back as the answer."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_direct_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def _open(req: HttpRequest, timeout: float) -> tuple[int, bytes, Any]:
    """POST once: (status, the start of the answer's body, its headers)."""
    r = urllib.request.Request(req.url, data=req.body, headers=req.headers, method="POST")
    host = urllib.parse.urlsplit(req.url).hostname or ""
    opener = _direct_opener if host in _LOOPBACK else urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(r, timeout=timeout) as resp:
            return resp.status, resp.read(65536), resp.headers
    except urllib.error.HTTPError as e:
        body = b""
        with contextlib.suppress(OSError, http.client.HTTPException):
            body = e.read(4096)
        return e.code, body, e.headers


def _redirected(url: str, status: int, headers: Any) -> str:
    """Why a 3xx answer is a failed delivery, naming where it pointed (scheme
    and host only: a path may hold a token)."""
    location = headers.get("Location") if headers else None
    where = redact_url(urllib.parse.urljoin(url, location)) if location else "no Location given"
    return (
        f"HTTP {status} redirect to {where}, not followed (a redirect may drop the alert's "
        "body); point the webhook URL at the new location"
    )


def _app_refusal(fmt: str, body: bytes) -> tuple[str, bool] | None:
    """Feishu and DingTalk answer HTTP 200 with an error code in the body.
    Returns (reason, retryable) for a refusal, None for success."""
    if fmt not in ("feishu", "dingtalk"):
        return None
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if fmt == "feishu":
        code = data.get("code", data.get("StatusCode", 0))
        msg = data.get("msg", data.get("StatusMessage", ""))
        too_many = {9499, 11232}
    else:
        code = data.get("errcode", 0)
        msg = data.get("errmsg", "")
        too_many = {130101}
    if code in (0, None):
        return None
    return f"{fmt} refused the message: code {code} {msg}".strip(), code in too_many


def _snippet(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:200]


def deliver(
    make_request: Callable[[], HttpRequest],
    policy: RetryPolicy,
    *,
    fmt: str = "json",
    abort: threading.Event | None = None,
    on_retry: Callable[[int, float, str], None] | None = None,
) -> Outcome:
    """POST one message, retrying as ``policy`` says. ``make_request`` is called
    per attempt so each attempt is signed with a fresh timestamp. Setting
    ``abort`` cuts the backoff waits short (the outcome is then retryable)."""
    started = time.monotonic()
    abort = abort or threading.Event()
    attempt = 0
    while True:
        attempt += 1
        retry_after: str | None = None
        status: int | None = None  # None: no answer at all
        req = make_request()
        try:
            code, body, headers = _open(req, policy.timeout)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            error, retryable = f"connection failed: {reason}", True
        else:
            status = code
            retry_after = headers.get("Retry-After") if headers else None
            if 300 <= code < 400:
                # Not delivered, and not worth an immediate retry (the answer
                # will be the same): kept for later, once the URL is fixed.
                error = _redirected(req.url, code, headers)
                return Outcome(False, code, attempt, error, True, time.monotonic() - started)
            if 200 <= code < 300:
                refusal = _app_refusal(fmt, body)
                if refusal is None:
                    return Outcome(True, code, attempt, seconds=time.monotonic() - started)
                error, retryable = refusal
            elif code == 429 or code >= 500:
                error, retryable = f"HTTP {code} {_snippet(body)}".strip(), True
            else:
                error, retryable = f"HTTP {code} {_snippet(body)}".strip(), False
        if not retryable or attempt > policy.retries or abort.is_set():
            return Outcome(
                False, status, attempt, error, retryable, seconds=time.monotonic() - started
            )
        delay = policy.delay(attempt)
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                delay = max(delay, min(float(retry_after), policy.max_backoff))
        if on_retry is not None:
            on_retry(attempt, delay, error)
        if abort.wait(delay):
            return Outcome(
                False, status, attempt, error + " (stopped)", True, time.monotonic() - started
            )
