"""The sender: alerts to webhooks without ever blocking the caller.

One queue and one thread per endpoint, so a slow or dead endpoint never
delays detection or the other endpoints. What cannot be delivered stays in
the :class:`~tunescope.alerts.outbox.Outbox` and is retried later; with
``send(..., durable=True)`` the alert is journaled there before it is queued,
so a process killed mid-delivery sends it again on its next start (delivery
is at least once). Every line it logs is scrubbed of URLs and secrets.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tunescope.alerts.delivery import Outcome, RetryPolicy, deliver
from tunescope.alerts.endpoint import Endpoint, HttpRequest, prepare
from tunescope.alerts.formats import FORMATS, build_payload, detect_format
from tunescope.alerts.model import Alert
from tunescope.alerts.outbox import Item, Outbox, item_from_dict
from tunescope.alerts.redact import check_url, redact_url, scrub, url_secrets
from tunescope.findings import Finding
from tunescope.say import say

SECRET_ENV = "TUNESCOPE_WEBHOOK_SECRET"

Log = Callable[[str], None]

_STOP = object()


def _describe(item: Item) -> str:
    return item.describe() if isinstance(item, Alert) else "message"


@dataclass
class _Job:
    item: Item
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
        log: where progress lines go (default: :func:`tunescope.say.say`). Never given a secret.
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
        self._log_fn = log if log is not None else say
        self._lock = threading.Lock()
        self._inflight: set[str] = set()
        self.stats = {"sent": 0, "rejected": 0, "kept": 0, "retries": 0}
        self._closed = False
        self._hurry = threading.Event()
        self._workers = [_Worker(self, ep, queue_size) for ep in self.endpoints]

    # ---- public ----------------------------------------------------------------

    def send(self, item: Finding | Item, *, durable: bool = False) -> None:
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
        for entry in entries:
            with self._lock:
                if entry["oid"] in self._inflight:
                    continue
                self._inflight.add(entry["oid"])
            try:
                item = item_from_dict(entry["item"])
                by_id[entry["endpoint"]].queue.put_nowait(_Job(item, entry["oid"]))
                n += 1
            except (KeyError, TypeError, ValueError, queue.Full):
                with self._lock:
                    self._inflight.discard(entry["oid"])
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
                stuck = [w.current] if w.current is not None else []
            while True:
                try:
                    job = w.queue.get_nowait()
                except queue.Empty:
                    break
                if job is not _STOP:
                    stuck.append(job)
            self._unsent(w.endpoint, stuck, "still sending at shutdown")
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

    def _send_one(self, worker: _Worker, item: Item) -> Outcome:
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
