"""Webhook alerts: payloads per chat service, signing, and delivery that never blocks.

Four payload formats (``--format``; ``auto`` picks one from the webhook's host),
one emitter module each:

- ``slack`` (:mod:`.slack`): an incoming-webhook message, ``text`` plus ``blocks``.
- ``feishu`` (:mod:`.feishu`): a Feishu/Lark custom bot ``post`` message. With a
  secret, the body carries ``timestamp`` (seconds) and ``sign`` = base64(HMAC-SHA256
  with the key ``timestamp + "\\n" + secret`` over an empty message), as the bot's
  signature-verification setting expects.
- ``dingtalk`` (:mod:`.dingtalk`): a DingTalk robot ``markdown`` message. With a
  secret, the URL gets ``&timestamp=`` (milliseconds) and ``&sign=`` = URL-encoded
  base64(HMAC-SHA256 with the key ``secret`` over ``timestamp + "\\n" + secret``).
- ``json`` (:mod:`.json_format`): the finding (``Finding.to_dict()``) plus a run
  summary. With a secret, two headers let the receiver check that the alert is
  ours and fresh::

      X-Tunescope-Timestamp: 1763812345                 (unix seconds)
      X-Tunescope-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>

  The body is the exact bytes received. :func:`verify_json_signature` does the
  check (and refuses timestamps older than five minutes).
  ``X-Tunescope-Delivery`` is a stable id per alert: a receiver can drop
  duplicates with it (delivery is at least once).

The modules: :mod:`.model` (what is sent), the four emitters and
:mod:`.formats` (which one a URL gets), :mod:`.signing`, :mod:`.redact` (URLs
hold tokens), :mod:`.endpoint` (the signed request), :mod:`.delivery` (one
POST with retries), :mod:`.outbox` (the journal of what is not delivered yet)
and :mod:`.sender` (a queue and a thread per endpoint). The training process
uses the same sender (``tunescope.train.live_alerts``). Nothing here imports
torch, and ``AlertSender.send()`` never waits on the network.

Secrets never appear in logs: webhook URLs are shown as ``endpoint N (host)``
and every message is scrubbed of the secret and the URLs.
"""

from __future__ import annotations

from tunescope.alerts.delivery import Outcome, RetryPolicy, deliver
from tunescope.alerts.endpoint import Endpoint, HttpRequest, prepare
from tunescope.alerts.formats import FORMATS, build_payload, detect_format
from tunescope.alerts.model import Alert, headline, run_line
from tunescope.alerts.outbox import OUTBOX_NAME, Outbox
from tunescope.alerts.redact import check_url, redact_url, scrub, url_secrets
from tunescope.alerts.sender import SECRET_ENV, AlertSender
from tunescope.alerts.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    dingtalk_sign,
    feishu_sign,
    json_signature,
    verify_json_signature,
)
from tunescope.alerts.slack import slack_payload

__all__ = [
    "FORMATS",
    "OUTBOX_NAME",
    "SECRET_ENV",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Alert",
    "AlertSender",
    "Endpoint",
    "HttpRequest",
    "Outbox",
    "Outcome",
    "RetryPolicy",
    "build_payload",
    "check_url",
    "deliver",
    "detect_format",
    "dingtalk_sign",
    "feishu_sign",
    "headline",
    "json_signature",
    "prepare",
    "redact_url",
    "run_line",
    "scrub",
    "slack_payload",
    "url_secrets",
    "verify_json_signature",
]
