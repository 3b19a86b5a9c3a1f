"""Webhook alerts: payloads per chat service, signing, and delivery that never blocks.

Four payload formats (``--format``; ``auto`` picks one from the webhook's host):

- ``slack``: an incoming-webhook message, ``text`` (the notification line) plus
  ``blocks`` (header, message, suggestion, run context). Other tools with
  Slack-compatible incoming webhooks show at least the ``text``.
- ``feishu``: a Feishu/Lark custom bot ``post`` message. With a secret, the body
  carries ``timestamp`` (seconds) and ``sign`` = base64(HMAC-SHA256 with the key
  ``timestamp + "\\n" + secret`` over an empty message), as the bot's
  signature-verification setting expects.
- ``dingtalk``: a DingTalk robot ``markdown`` message. With a secret, the URL
  gets ``&timestamp=`` (milliseconds) and ``&sign=`` = URL-encoded
  base64(HMAC-SHA256 with the key ``secret`` over ``timestamp + "\\n" + secret``).
- ``json``: the finding (``Finding.to_dict()``) plus a run summary. With a
  secret, two headers let the receiver check that the alert is ours and fresh::

      X-Tunescope-Timestamp: 1763812345                 (unix seconds)
      X-Tunescope-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>

  The body is the exact bytes received. :func:`verify_json_signature` does the
  check (and refuses timestamps older than five minutes).
  ``X-Tunescope-Delivery`` is a stable id per alert: a receiver can drop
  duplicates with it (delivery is at least once).

Delivery (:class:`AlertSender`): one queue and one sender thread per endpoint,
so a slow or dead endpoint never delays detection or the other endpoints.
Each request has a timeout; 5xx answers, 429 and connection errors are retried
with exponential backoff and jitter; other 4xx answers (and Feishu/DingTalk
"code"/"errcode" refusals) are reported and not retried. What cannot be
delivered stays in an outbox file (JSONL, :class:`Outbox`) and is retried
later; the watcher also journals each alert there before it counts as sent,
so a watcher killed mid-delivery sends it again on its next start (delivery
is at least once).

The trainer side uses the same sender: :class:`TrainingAlerts` watches the
loss and gradient norm of each step in the training process itself and sends
one alert on the first NaN/Inf and one on a sustained loss rise. Nothing here
imports torch, and ``send()`` never waits on the network.

Secrets never appear in logs: webhook URLs are shown as ``endpoint N (host)``
and every message is scrubbed of the secret and the URLs.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import math
import os
import queue
import random
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunescope import __version__
from tunescope.findings import Finding, Severity, jsonable, step_range
from tunescope.numbers import cell

FORMATS = ("slack", "feishu", "dingtalk", "json")
SECRET_ENV = "TUNESCOPE_WEBHOOK_SECRET"
SIGNATURE_HEADER = "X-Tunescope-Signature"
TIMESTAMP_HEADER = "X-Tunescope-Timestamp"
DELIVERY_HEADER = "X-Tunescope-Delivery"
EVENT_HEADER = "X-Tunescope-Event"
SIGNATURE_TOLERANCE_S = 300
OUTBOX_NAME = "alerts-outbox.jsonl"

Log = Callable[[str], None]


# ---- what is sent --------------------------------------------------------------------


@dataclass
class Alert:
    """One finding to announce, why now (``new``, ``updated``: the incident grew,
    ``escalated``: its severity rose), a summary of its run, and how many other
    incidents of the same detector and run were folded into it by the rate limit."""

    finding: Finding
    reason: str = "new"
    run: dict[str, Any] = field(default_factory=dict)
    folded: int = 0
    created: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        """Stable per incident and revision: the same alert always has the same id."""
        f = self.finding
        ident = [f.run, f.rank, f.detector, f.step_start, f.step_end, f.severity.value, self.reason]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:24]

    @property
    def event(self) -> str:
        return f"finding.{self.reason}"

    def describe(self) -> str:
        """A short line for logs: ``new TS101 alert for run-a (rank 0, steps 120-131)``."""
        f = self.finding
        where = f.run if f.rank is None else f"{f.run} rank {f.rank}"
        steps = step_range(f)
        return f"{self.reason} {f.severity.value} {f.detector} alert for {where}" + (
            f" ({steps})" if steps else ""
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason,
            "finding": self.finding.to_dict(),
            "run": jsonable(self.run),
            "folded": self.folded,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        fd = dict(d["finding"])
        finding = Finding(
            run=fd["run"],
            detector=fd["detector"],
            name=fd.get("name", fd["detector"]),
            severity=Severity.parse(fd.get("severity", "warning")),
            step_start=fd.get("step_start"),
            step_end=fd.get("step_end"),
            message=fd.get("message", ""),
            suggestion=fd.get("suggestion", ""),
            rank=fd.get("rank"),
            evidence=fd.get("evidence") or {},
        )
        return cls(
            finding=finding,
            reason=d.get("reason", "new"),
            run=d.get("run") or {},
            folded=int(d.get("folded", 0)),
            created=float(d.get("created", time.time())),
        )


def headline(alert: Alert) -> str:
    f = alert.finding
    prefix = {"updated": "still firing: ", "escalated": "escalated: "}.get(alert.reason, "")
    where = f"run {f.run}" + ("" if f.rank is None else f" rank {f.rank}")
    return f"[{f.severity.value.upper()}] {prefix}{f.name} in {where}"


def _num(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("Inf" if value > 0 else "-Inf")
        return f"{value:.4g}"
    return str(value)


def run_line(run: dict[str, Any]) -> str:
    """``running · step 1200/3000 · loss 2.31 · lr 3e-05``, from what the summary holds."""
    parts = []
    if run.get("status"):
        parts.append(str(run["status"]))
    if run.get("last_step") is not None:
        total = run.get("total_steps")
        parts.append(f"step {run['last_step']}" + (f"/{total}" if total else ""))
    for key, label in (("last_loss", "loss"), ("last_lr", "lr")):
        if run.get(key) is not None:
            parts.append(f"{label} {cell(run[key])}")
    if run.get("model"):
        parts.append(str(run["model"]))
    return " · ".join(parts)


def _detail_lines(alert: Alert) -> list[str]:
    f = alert.finding
    steps = step_range(f)
    lines = [f"detector {f.detector}" + (f" · {steps}" if steps else "")]
    summary = run_line(alert.run)
    if summary:
        lines.append(f"run: {summary}")
    if alert.folded:
        lines.append(
            f"{alert.folded} more incident(s) of this detector in this run since the last alert"
        )
    if alert.run.get("report_url"):
        lines.append(f"report: {alert.run['report_url']}")
    return lines


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
    context = " | ".join(_slack_escape(x) for x in [*_detail_lines(alert), "tunescope"])
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context[:3000]}]})
    return {"text": f"{title}: {f.message}", "blocks": blocks}


def feishu_payload(alert: Alert) -> dict[str, Any]:
    f = alert.finding
    rows: list[list[dict[str, Any]]] = [[{"tag": "text", "text": f.message}]]
    if f.suggestion:
        rows.append([{"tag": "text", "text": f"Suggestion: {f.suggestion}"}])
    rows += [[{"tag": "text", "text": line}] for line in _detail_lines(alert)]
    rows.append([{"tag": "text", "text": "sent by tunescope"}])
    post = {"title": headline(alert), "content": rows}
    return {"msg_type": "post", "content": {"post": {"en_us": post, "zh_cn": post}}}


def _md_escape(text: str) -> str:
    return text.replace("\n", "  \n")


def dingtalk_payload(alert: Alert) -> dict[str, Any]:
    f = alert.finding
    title = headline(alert)
    parts = [f"### {_md_escape(title)}", _md_escape(f.message)]
    if f.suggestion:
        parts.append(f"**Suggestion:** {_md_escape(f.suggestion)}")
    parts += [f"> {_md_escape(line)}" for line in _detail_lines(alert)]
    parts.append("sent by tunescope")
    # DingTalk shows ``title`` in the notification; the body is Markdown.
    return {"msgtype": "markdown", "markdown": {"title": title[:100], "text": "\n\n".join(parts)}}


def json_payload(alert: Alert) -> dict[str, Any]:
    return {
        "source": "tunescope",
        "version": __version__,
        "event": alert.event,
        "id": alert.id,
        "reason": alert.reason,
        "title": headline(alert),
        "finding": alert.finding.to_dict(),
        "run": jsonable(alert.run),
        "folded": alert.folded,
        "created": alert.created,
    }


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


# ---- signing -------------------------------------------------------------------------


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


def check_url(url: str) -> None:
    """Refuse what cannot be a webhook URL, without ever echoing its path or query
    (they hold tokens): only the scheme and a character position are named."""
    bad = next((i for i, c in enumerate(url) if c.isspace() or ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(
            f"a webhook URL must not contain whitespace or control characters (found one "
            f"at character {bad + 1} of {len(url)}: a stray space, tab or line ending "
            "copied with the URL?)"
        )
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        scheme = f"{parts.scheme}://" if parts.scheme and parts.netloc else "no scheme"
        raise ValueError(f"a webhook must be an http:// or https:// URL with a host (got {scheme})")


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that may hold a token, longest first, as they may appear
    in text: the URL, its path and query (raw and decoded), each query value, each
    long path segment and the userinfo."""
    parts = urllib.parse.urlsplit(url)
    found = {url, url.rstrip("/")}
    path, query = parts.path, parts.query
    if path.strip("/"):
        found.add(path)
        found.add(urllib.parse.unquote(path))
        for segment in path.split("/"):
            if len(segment) >= 6:
                found.add(segment)
                found.add(urllib.parse.unquote(segment))
    if query:
        found.add(query)
        found.add("?" + query)
        found.add(path + "?" + query)
        # Values shorter than 5 characters cannot hold a credential worth the name,
        # and scrubbing them would garble ordinary words of the message.
        for _, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            if len(value) >= 5:
                found.add(value)
                found.add(urllib.parse.quote_plus(value))
                found.add(urllib.parse.quote(value, safe=""))
        for raw in query.split("&"):
            value = raw.partition("=")[2]
            if len(value) >= 5:
                found.add(value)
    if parts.fragment:
        found.add(parts.fragment)
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        found.add(userinfo)
        found.update(p for p in userinfo.split(":") if len(p) >= 3)
    found |= {f.strip() for f in found} | {repr(f)[1:-1] for f in found}
    found.discard("")
    return sorted(found, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str], replacement: str = "<redacted>") -> str:
    """``text`` with every one of ``secrets`` replaced (longest first)."""
    for s in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(s, replacement)
    return text


def redact_url(url: str) -> str:
    """``https://hooks.slack.com/…``: scheme and host only (paths and queries hold tokens)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    if parts.port:
        host = f"{host}:{parts.port}"
    rest = "/…" if (parts.path.strip("/") or parts.query) else ""
    return f"{parts.scheme}://{host}{rest}"


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


# ---- one delivery, with retries ------------------------------------------------------


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
        req = make_request()
        try:
            status, body, headers = _open(req, policy.timeout)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            status, body = None, b""
            error, retryable = f"connection failed: {reason}", True
        else:
            retry_after = headers.get("Retry-After") if headers else None
            if 300 <= status < 400:
                # Not delivered, and not worth an immediate retry (the answer
                # will be the same): kept for later, once the URL is fixed.
                error = _redirected(req.url, status, headers)
                return Outcome(False, status, attempt, error, True, time.monotonic() - started)
            if 200 <= status < 300:
                refusal = _app_refusal(fmt, body)
                if refusal is None:
                    return Outcome(True, status, attempt, seconds=time.monotonic() - started)
                error, retryable = refusal
            elif status == 429 or status >= 500:
                error, retryable = f"HTTP {status} {_snippet(body)}".strip(), True
            else:
                error, retryable = f"HTTP {status} {_snippet(body)}".strip(), False
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


# ---- the outbox ----------------------------------------------------------------------


class Outbox:
    """Alerts not delivered yet, one JSON object per line: ``oid`` (the entry's
    id), ``endpoint`` (an id derived from the URL, never the URL itself),
    ``queued_at``, ``failed_at`` and ``error`` (after a failed attempt) and
    ``item`` (the alert). Safe across threads and processes (a file lock);
    appends are fsynced, rewrites go through a temporary file and a rename.

    It serves as a journal: ``AlertSender.send(item, durable=True)`` records
    the alert before queueing it and removes it once delivered (or refused), so
    a watcher killed mid-delivery sends it on its next start. Alerts that fail
    for a reason worth retrying (5xx, connection errors, a stop) stay in it
    until a later ``retry_outbox()``; entries older than ``max_age_s`` are dropped.
    """

    def __init__(self, path: str | os.PathLike[str], max_age_s: float = 7 * 86400) -> None:
        self.path = Path(path)
        self.max_age_s = max_age_s
        self._lock = threading.Lock()

    def _file_lock(self) -> Any:
        from filelock import FileLock

        return FileLock(str(self.path) + ".lock")

    def add(
        self, items: Iterable[tuple[str, Alert | dict[str, Any]]], error: str | None = None
    ) -> list[str]:
        """Record ``(endpoint_id, item)`` pairs; returns their entry ids."""
        now = time.time()
        entries = []
        for endpoint_id, item in items:
            entry = {
                "oid": uuid.uuid4().hex[:16],
                "endpoint": endpoint_id,
                "queued_at": now,
                "failed_at": now if error else None,
                "error": error,
                "item": _item_to_dict(item),
            }
            entries.append(entry)
        if not entries:
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(e, ensure_ascii=False) + "\n" for e in entries]
        with self._lock, self._file_lock(), open(self.path, "a", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        return [e["oid"] for e in entries]

    def _read(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn last line from a killed process
            if isinstance(entry, dict) and {"oid", "endpoint", "item"} <= entry.keys():
                out.append(entry)
        return out

    def _write(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _update(self, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
        with self._lock, self._file_lock():
            entries = self._read()
            new = change(entries)
            if new is not entries:
                self._write(new)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock, self._file_lock():
            return self._read()

    def remove(self, oids: Iterable[str]) -> None:
        gone = set(oids)
        if gone and self.path.exists():
            self._update(lambda es: [e for e in es if e["oid"] not in gone])

    def mark_failed(self, oid: str, error: str) -> None:
        def change(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
            for e in entries:
                if e["oid"] == oid:
                    e["failed_at"], e["error"] = time.time(), error
            return list(entries)

        self._update(change)

    def pending(self, endpoint_ids: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
        """The entries for these endpoints, oldest first, after dropping the
        entries (of any endpoint) older than ``max_age_s``. Returns (entries, dropped)."""
        ids = set(endpoint_ids)
        if not self.path.exists():
            return [], 0
        now = time.time()
        box: dict[str, Any] = {}

        def change(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
            fresh = [e for e in entries if now - float(e.get("queued_at") or now) <= self.max_age_s]
            box["dropped"] = len(entries) - len(fresh)
            box["mine"] = [e for e in fresh if e["endpoint"] in ids]
            return fresh if box["dropped"] else entries

        self._update(change)
        return box["mine"], box["dropped"]


# ---- the sender ----------------------------------------------------------------------

_STOP = object()


def _item_to_dict(item: Alert | dict[str, Any]) -> dict[str, Any]:
    return {"alert": item.to_dict()} if isinstance(item, Alert) else {"payload": item}


def _item_from_dict(d: dict[str, Any]) -> Alert | dict[str, Any]:
    return Alert.from_dict(d["alert"]) if "alert" in d else dict(d["payload"])


def _describe(item: Alert | dict[str, Any]) -> str:
    return item.describe() if isinstance(item, Alert) else "message"


@dataclass
class _Job:
    item: Alert | dict[str, Any]
    oid: str | None = None
    """The outbox entry that holds this item, when it has one."""


class _Worker:
    """The queue and thread of one endpoint."""

    def __init__(self, sender: AlertSender, endpoint: Endpoint, queue_size: int) -> None:
        self.sender = sender
        self.endpoint = endpoint
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.abort = threading.Event()
        self.lock = threading.Lock()
        self.current: _Job | None = None
        self.abandoned = False
        self.signed_secrets: list[str] = []
        """The parts of the last prepared (signed) URL, scrubbed from logs."""
        self.thread = threading.Thread(
            target=self._loop, name=f"tunescope-alerts-{endpoint.label}", daemon=True
        )
        self.thread.start()

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            try:
                if job is _STOP:
                    return
                if self.abort.is_set():
                    self.sender._unsent(self.endpoint, [job], "stopped before sending")
                    continue
                with self.lock:
                    self.current = job
                try:
                    outcome = self.sender._send_one(self, job.item)
                except Exception as e:  # a bug must not kill the endpoint's thread
                    outcome = Outcome(False, error=f"internal error: {e!r}", retryable=True)
                with self.lock:
                    self.current = None
                    if self.abandoned:
                        continue  # close() has already accounted for it
                self.sender._settle(self.endpoint, job, outcome)
            finally:
                self.queue.task_done()


class AlertSender:
    """Sends alerts to webhooks without ever blocking the caller.

    ``send(item)`` puts a :class:`~tunescope.findings.Finding`, an
    :class:`Alert` or a ready payload ``dict`` (sent as is) on each endpoint's
    queue and returns at once. ``close(timeout)`` drains the queues for up to
    ``timeout`` seconds and keeps what is left in the outbox.

    Args:
        urls: webhook URLs (or :class:`Endpoint` objects).
        format: ``auto`` (from each URL's host), ``slack``, ``feishu``,
            ``dingtalk`` or ``json``.
        secret: signing secret; None reads ``TUNESCOPE_WEBHOOK_SECRET``; ``""``
            disables signing.
        policy: timeouts and retries.
        outbox: file for alerts not delivered yet (None: failures are only reported).
        queue_size: alerts that may wait per endpoint; past it they go to the outbox.
        log: where progress lines go (default: stderr). Never given a secret.
    """

    def __init__(
        self,
        urls: str | Sequence[str | Endpoint],
        format: str = "auto",
        secret: str | None = None,
        *,
        policy: RetryPolicy | None = None,
        outbox: str | os.PathLike[str] | Outbox | None = None,
        queue_size: int = 1000,
        log: Log | None = None,
    ) -> None:
        if isinstance(urls, str):
            urls = [urls]
        if format != "auto" and format not in FORMATS:
            raise ValueError(f"unknown alert format {format!r}; use auto or one of {FORMATS}")
        if secret is None:
            secret = os.environ.get(SECRET_ENV) or None
        self.secret = secret or None
        self.policy = policy or RetryPolicy()
        self.endpoints: list[Endpoint] = []
        for i, u in enumerate(urls, 1):
            if isinstance(u, Endpoint):
                check_url(u.url)
                self.endpoints.append(u)
                continue
            check_url(u)
            fmt = detect_format(u) if format == "auto" else format
            label = f"endpoint {i} ({redact_url(u)}, {fmt})"
            self.endpoints.append(Endpoint(u, fmt, self.secret, label))
        if not self.endpoints:
            raise ValueError("no webhook URL given")
        ids = [ep.id for ep in self.endpoints]
        for i, ep_id in enumerate(ids):
            if ep_id in ids[:i]:
                raise ValueError(f"webhook {i + 1} is the same URL as an earlier one")
        if isinstance(outbox, Outbox) or outbox is None:
            self.outbox = outbox
        else:
            self.outbox = Outbox(outbox)
        self._log_fn = log if log is not None else stderr_log
        self._lock = threading.Lock()
        self._inflight: set[str] = set()
        self.stats = {"sent": 0, "rejected": 0, "kept": 0, "retries": 0}
        self._closed = False
        self._hurry = threading.Event()
        self._workers = [_Worker(self, ep, queue_size) for ep in self.endpoints]

    # ---- public ----------------------------------------------------------------

    def send(self, item: Finding | Alert | dict[str, Any], *, durable: bool = False) -> None:
        """Queue ``item`` for every endpoint; never waits on the network.

        ``durable``: record it in the outbox first (one fsynced append), so that
        it is delivered even if this process dies before it is; for callers
        that can afford a disk write (the watcher), not for a training step.
        """
        if self._closed:
            raise RuntimeError("AlertSender is closed")
        if isinstance(item, Finding):
            item = Alert(item)
        oids: list[str | None] = [None] * len(self._workers)
        if durable and self.outbox is not None:
            try:
                oids = list(self.outbox.add([(w.endpoint.id, item) for w in self._workers]))
            except OSError as e:
                self._log(f"cannot write the outbox {self.outbox.path}: {e.strerror or e}")
            with self._lock:
                self._inflight.update(o for o in oids if o)
        for w, oid in zip(self._workers, oids, strict=True):
            try:
                w.queue.put_nowait(_Job(item, oid))
            except queue.Full:
                self._unsent(w.endpoint, [_Job(item, oid)], "the send queue is full")

    def pending(self) -> int:
        """Alerts queued or being sent, over all endpoints."""
        return sum(w.queue.unfinished_tasks for w in self._workers)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queue is empty; True if it got there in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.pending():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def undelivered(self) -> int:
        """Alerts for these endpoints waiting in the outbox."""
        if self.outbox is None:
            return 0
        return len(self.outbox.pending([ep.id for ep in self.endpoints])[0])

    def retry_outbox(self) -> int:
        """Queue again what the outbox holds for these endpoints (except what is
        queued already). Returns how many."""
        if self.outbox is None or self._closed:
            return 0
        by_id = {w.endpoint.id: w for w in self._workers}
        try:
            entries, dropped = self.outbox.pending(by_id)
        except OSError as e:
            self._log(f"cannot read the outbox {self.outbox.path}: {e.strerror or e}")
            return 0
        if dropped:
            self._log(f"dropped {dropped} outbox alert(s) older than {self.outbox.max_age_s:.0f}s")
        n = 0
        for e in entries:
            with self._lock:
                if e["oid"] in self._inflight:
                    continue
                self._inflight.add(e["oid"])
            try:
                item = _item_from_dict(e["item"])
                by_id[e["endpoint"]].queue.put_nowait(_Job(item, e["oid"]))
                n += 1
            except (KeyError, TypeError, ValueError, queue.Full):
                with self._lock:
                    self._inflight.discard(e["oid"])
        if n:
            self._log(f"retrying {n} alert(s) from the outbox")
        return n

    def close(self, timeout: float = 5.0) -> int:
        """Deliver what is queued for up to ``timeout`` seconds, then keep what is
        left in the outbox. Returns how many alerts were left undelivered."""
        if self._closed:
            return 0
        self._closed = True
        before = self.stats["kept"]
        for w in self._workers:
            w.queue.put(_STOP)
        deadline = time.monotonic() + max(0.0, timeout)
        interrupted: BaseException | None = None
        try:
            for w in self._workers:
                # Short slices, so that hurry() (a second Ctrl-C) ends the wait at once.
                while w.thread.is_alive() and not self._hurry.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    w.thread.join(min(left, 0.05))
        except KeyboardInterrupt as e:
            # Interrupted while draining: still journal what is left, then re-raise.
            interrupted = e
        for w in self._workers:
            w.abort.set()  # cut backoff waits short; queued items go to the outbox
        grace = time.monotonic() + (0.2 if self._hurry.is_set() or interrupted else 0.5)
        for w in self._workers:
            w.thread.join(max(0.0, grace - time.monotonic()))
        for w in self._workers:
            if not w.thread.is_alive():
                continue
            # Stuck in an HTTP request: keep its alert and whatever is queued.
            with w.lock:
                w.abandoned = True
                left = [w.current] if w.current is not None else []
            while True:
                try:
                    job = w.queue.get_nowait()
                except queue.Empty:
                    break
                if job is not _STOP:
                    left.append(job)
            self._unsent(w.endpoint, left, "still sending at shutdown")
        if interrupted is not None:
            raise interrupted
        return self.stats["kept"] - before

    def hurry(self) -> None:
        """Stop waiting for deliveries: a ``close()`` under way (or the next one)
        writes what is queued or in flight to the outbox at once. Safe to call
        from a signal handler."""
        self._hurry.set()

    def __enter__(self) -> AlertSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals -------------------------------------------------------------

    def _log(self, message: str) -> None:
        self._log_fn(self._scrub(message))

    def _scrub(self, message: str) -> str:
        """``message`` with every URL, URL part, signature and secret scrubbed
        (error texts from urllib or a server's answer may quote them)."""
        for ep in self.endpoints:
            message = message.replace(ep.url, ep.label)
        secrets: set[str] = set()
        for w in getattr(self, "_workers", []):
            secrets.update(w.signed_secrets)
        for ep in self.endpoints:
            secrets.update(url_secrets(ep.url))
            if ep.secret:
                secrets.add(ep.secret)
        if self.secret:
            secrets.add(self.secret)
        return scrub(message, secrets)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _send_one(self, worker: _Worker, item: Alert | dict[str, Any]) -> Outcome:
        ep = worker.endpoint
        if isinstance(item, Alert):
            payload = build_payload(item, ep.format)
            delivery_id, event = item.id, item.event
        else:
            payload = item
            delivery_id = hashlib.sha256(
                json.dumps(item, sort_keys=True, default=str).encode()
            ).hexdigest()[:24]
            event = "message"

        def on_retry(n: int, delay: float, why: str) -> None:
            self._count("retries")
            self._log(
                f"{ep.label}: {why}; retry {n}/{self.policy.retries} in {delay:.1f}s "
                f"({_describe(item)})"
            )

        def make_request() -> HttpRequest:
            req = prepare(ep, payload, delivery_id=delivery_id, event=event)
            if req.url != ep.url:  # signed (DingTalk): the signature is in the URL
                worker.signed_secrets = url_secrets(req.url)
            return req

        return deliver(
            make_request,
            self.policy,
            fmt=ep.format,
            abort=worker.abort,
            on_retry=on_retry,
        )

    def _settle(self, ep: Endpoint, job: _Job, outcome: Outcome) -> None:
        what = _describe(job.item)
        if not outcome.ok and outcome.retryable:
            self._unsent(ep, [job], f"{outcome.error} after {outcome.attempts} attempt(s)")
            return
        if outcome.ok:
            self._count("sent")
            self._log(
                f"sent {what} to {ep.label}: HTTP {outcome.status} after "
                f"{outcome.attempts} attempt(s), {outcome.seconds:.2f}s"
            )
        else:
            self._count("rejected")
            self._log(
                f"{ep.label} rejected {what}: {outcome.error}; not retried "
                "(check the webhook URL, --format and the secret)"
            )
        if job.oid is not None and self.outbox is not None:
            try:
                self.outbox.remove([job.oid])
            except OSError as e:
                self._log(f"cannot update the outbox {self.outbox.path}: {e.strerror or e}")
            with self._lock:
                self._inflight.discard(job.oid)

    def _unsent(self, ep: Endpoint, jobs: list[_Job], why: str) -> None:
        """Keep jobs that were not delivered in the outbox for a later retry."""
        jobs = [j for j in jobs if j is not _STOP]
        if not jobs:
            return
        self._count("kept", len(jobs))
        what = _describe(jobs[0].item) if len(jobs) == 1 else f"{len(jobs)} alerts"
        if self.outbox is None:
            self._log(f"could not deliver {what} to {ep.label}: {why}; dropped (no outbox)")
            return
        why = self._scrub(why)
        try:
            for j in jobs:
                if j.oid is not None:
                    self.outbox.mark_failed(j.oid, why)
            self.outbox.add([(ep.id, j.item) for j in jobs if j.oid is None], error=why)
        except OSError as e:
            self._log(f"cannot write the outbox {self.outbox.path}: {e.strerror or e}")
            return
        finally:
            with self._lock:
                self._inflight.difference_update(j.oid for j in jobs if j.oid)
        self._log(
            f"could not deliver {what} to {ep.label}: {why}; kept in {self.outbox.path} "
            "for a later retry"
        )


_print_lock = threading.Lock()


def stderr_log(message: str) -> None:
    """Print one ``tunescope: ...`` line on stderr (whole lines, from any thread)."""
    with _print_lock:
        print(f"tunescope: {message}", file=sys.stderr, flush=True)


# ---- the trainer side ----------------------------------------------------------------


class TrainingAlerts:
    """Live checks inside the training process, cheap enough for every step.

    Fires once per run and rank on the first non-finite loss or grad norm, and
    once on a sustained rise: the loss reaches ``rise`` x its first finite value
    after ``warmup_steps`` and does not fall back under ``recover`` x that value
    for ``patience`` steps. Each returns the :class:`Finding` it sent (or None).

    Pass Python floats (``loss.item()`` is a host-device sync point: reuse the
    value the trainer already logs).
    """

    # the ids and names of the detectors that judge the same thing after the
    # fact (``tunescope explain TS001``), so an alert points at documentation
    NONFINITE = "TS001"
    DIVERGENCE = "TS102"

    def __init__(
        self,
        sender: AlertSender | None,
        *,
        warmup_steps: int = 0,
        rise: float = 3.0,
        recover: float = 2.0,
        patience: int = 20,
        total_steps: int | None = None,
        model: str | None = None,
    ) -> None:
        if rise <= recover or recover <= 1:
            raise ValueError(f"need rise > recover > 1, got rise={rise} recover={recover}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.sender = sender
        self.warmup_steps = warmup_steps
        self.rise = rise
        self.recover = recover
        self.patience = patience
        self.total_steps = total_steps
        self.model = model
        self._first: dict[tuple[str, int], float] = {}
        self._streak: dict[tuple[str, int], tuple[int, float]] = {}
        self._fired: set[tuple[str, int, str]] = set()

    @classmethod
    def for_webhook(
        cls,
        urls: str | Sequence[str],
        *,
        format: str = "auto",
        secret: str | None = None,
        outbox: str | os.PathLike[str] | None = None,
        policy: RetryPolicy | None = None,
        **rules: Any,
    ) -> TrainingAlerts:
        """Checks that send to ``urls`` (an :class:`AlertSender` of their own);
        ``rules`` are this class's keyword options (``warmup_steps``, ...)."""
        sender = AlertSender(urls, format=format, secret=secret, outbox=outbox, policy=policy)
        return cls(sender, **rules)

    def close(self, timeout: float = 5.0) -> int:
        """Deliver what is queued (up to ``timeout`` s); returns how many were not."""
        return self.sender.close(timeout) if self.sender is not None else 0

    def on_step(
        self,
        run: str,
        rank: int,
        step: int,
        loss: float | None = None,
        grad_norm: float | None = None,
        lr: float | None = None,
    ) -> Finding | None:
        key = (run, rank)
        loss = _as_float(loss)
        grad_norm = _as_float(grad_norm)
        summary = {
            "status": "running",
            "last_step": step,
            "total_steps": self.total_steps,
            "last_loss": loss,
            "last_lr": _as_float(lr),
            "model": self.model,
        }
        bad = [(n, v) for n, v in (("loss", loss), ("grad_norm", grad_norm)) if _nonfinite(v)]
        if bad and (run, rank, self.NONFINITE) not in self._fired:
            self._fired.add((run, rank, self.NONFINITE))
            what = " and ".join(f"{n} = {cell(v)}" for n, v in bad)
            f = Finding(
                run=run,
                rank=rank,
                detector=self.NONFINITE,
                name="non-finite",
                severity=Severity.ERROR,
                step_start=step,
                step_end=step,
                message=f"{what} at step {step}: training has produced NaN/Inf (seen live by the trainer)",
                suggestion="stop the run; lower the learning rate, clip gradients at 1.0, "
                "or use bf16 instead of fp16; resume from the last good checkpoint",
                evidence={n: v for n, v in bad},
            )
            return self._send(f, summary)
        if loss is None or not math.isfinite(loss):
            return None
        first = self._first.setdefault(key, loss)
        if first <= 0 or step <= self.warmup_steps:
            return None
        if (run, rank, self.DIVERGENCE) in self._fired:
            return None
        streak = self._streak.get(key)
        if streak is None:
            if loss >= self.rise * first:
                self._streak[key] = (step, loss)
            return None
        if loss < self.recover * first:
            del self._streak[key]
            return None
        start, peak = streak
        peak = max(peak, loss)
        self._streak[key] = (start, peak)
        if step - start + 1 < self.patience:
            return None
        self._fired.add((run, rank, self.DIVERGENCE))
        f = Finding(
            run=run,
            rank=rank,
            detector=self.DIVERGENCE,
            name="divergence",
            severity=Severity.ERROR,
            step_start=start,
            step_end=step,
            message=(
                f"loss rose to {cell(peak)} ({peak / first:.1f}x its first value {cell(first)}) "
                f"at step {start} and stayed above {self.recover:g}x for "
                f"{step - start + 1} steps"
            ),
            suggestion="lower the learning rate (or lengthen warmup) and clip gradients; "
            "resume from a checkpoint before the rise",
            evidence={"first_loss": first, "peak_loss": peak, "loss": loss},
        )
        return self._send(f, summary)

    def intervention(
        self, run: str, rank: int, step: int, action: str, finding: str, reason: str
    ) -> Finding:
        """Announce what the training guard did (``action`` at ``step`` because
        of detector ``finding``): detector ``guard-<action>``, a warning."""
        f = Finding(
            run=run,
            rank=rank,
            detector=f"guard-{action}",
            name=f"guard {action}",
            severity=Severity.WARNING,
            step_start=step,
            step_end=step,
            message=f"the training guard did {action} at step {step} ({finding}: {reason})",
            suggestion="see the run's intervention events; the run goes on unless the action "
            "was stop",
            evidence={"action": action, "finding": finding},
        )
        summary = {"status": "running", "last_step": step, "total_steps": self.total_steps}
        return self._send(f, {**summary, "model": self.model})

    def _send(self, finding: Finding, summary: dict[str, Any]) -> Finding:
        if self.sender is not None:
            self.sender.send(Alert(finding, run=summary))
        return finding


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _nonfinite(value: float | None) -> bool:
    return value is not None and not math.isfinite(value)
