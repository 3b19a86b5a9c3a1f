"""Alert payloads, signing and delivery, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.parse

import pytest
from webhook_receiver import Receiver, closed_port_url

from tunescope.alerts import (
    Alert,
    AlertSender,
    Outbox,
    RetryPolicy,
    detect_format,
    redact_url,
    verify_json_signature,
)
from tunescope.findings import Finding, Severity

SECRET = "s3cr3t-value-do-not-print"
FAST = RetryPolicy(timeout=2.0, retries=2, backoff=0.05, max_backoff=0.1)


def finding(**kw) -> Finding:
    base = dict(
        run="qwen-lora",
        rank=0,
        detector="TS101",
        name="loss spike",
        severity=Severity.ERROR,
        step_start=120,
        step_end=131,
        message="loss rose 7.3x its running median at step 120",
        suggestion="lower the learning rate or clip gradients at 1.0",
        evidence={"ratio": 7.3, "loss": float("nan")},
    )
    base.update(kw)
    return Finding(**base)


SUMMARY = {"status": "running", "last_step": 140, "total_steps": 1000, "last_loss": 2.5}


class LogLines(list):
    def __call__(self, message: str) -> None:
        self.append(message)


def send_one(url, fmt, secret="", **kw):
    log = LogLines()
    sender = AlertSender([url], format=fmt, secret=secret, policy=FAST, log=log, **kw)
    sender.send(Alert(finding(), run=SUMMARY))
    return sender, log


def test_slack_payload_shape():
    with Receiver() as rx:
        sender, _ = send_one(rx.url, "slack")
        (req,) = rx.wait_for(1)
        sender.close()
    body = req.json()
    assert body["text"].startswith("[ERROR] loss spike in run qwen-lora rank 0")
    kinds = [b["type"] for b in body["blocks"]]
    assert kinds == ["header", "section", "section", "context"]
    assert body["blocks"][0]["text"]["type"] == "plain_text"
    assert "7.3x" in body["blocks"][1]["text"]["text"]
    assert "clip gradients" in body["blocks"][2]["text"]["text"]
    assert "step 140/1000" in body["blocks"][3]["elements"][0]["text"]
    assert req.headers["Content-Type"].startswith("application/json")


def test_slack_text_is_escaped():
    from tunescope.alerts import slack_payload

    body = slack_payload(Alert(finding(message="loss <b>7x</b> & rising")))
    assert body["blocks"][1]["text"]["text"] == "loss &lt;b&gt;7x&lt;/b&gt; &amp; rising"


HOSTILE_RUN = "<!channel> look <mailto:a@b.c|CLICK> & <@U123>"


def _strings(value) -> list[str]:
    """Every string in a decoded JSON payload, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _send_hostile(fmt: str, reply: bytes = b'{"ok": true}') -> dict:
    """What the receiver got for a finding whose run, message and suggestion
    hold mentions and links, and whose run summary names a hostile model."""
    hostile = finding(
        run=HOSTILE_RUN,
        message="loss rose <!here> & fell",
        suggestion="see <https://evil.example|the fix>",
    )
    with Receiver(reply=reply) as rx:
        sender = AlertSender([rx.url], format=fmt, policy=FAST, log=LogLines())
        sender.send(Alert(hostile, run={**SUMMARY, "model": "<!everyone>"}))
        (req,) = rx.wait_for(1)
        sender.close()
    return req.json()


def test_slack_escapes_names_in_every_text_field():
    body = _send_hostile("slack")
    texts = _strings(body)
    assert not any("<" in t or ">" in t for t in texts), texts
    assert body["text"].startswith(
        "[ERROR] loss spike in run &lt;!channel&gt; look &lt;mailto:a@b.c|CLICK&gt; &amp; &lt;@U123&gt;"
    )
    assert "&lt;!here&gt; &amp; fell" in body["text"]
    assert "&lt;!everyone&gt;" in body["blocks"][3]["elements"][0]["text"]


def test_feishu_escapes_every_text_element_and_marks_it_for_unescaping():
    body = _send_hostile("feishu", reply=b'{"code":0,"msg":"success"}')
    post = body["content"]["post"]["en_us"]
    cells = [cell for row in post["content"] for cell in row]
    assert all(cell["un_escape"] is True for cell in cells)
    assert not any("<" in c["text"] or ">" in c["text"] for c in cells), cells
    assert cells[0]["text"] == "loss rose &lt;!here&gt; &amp; fell"
    assert post["title"] == f"[ERROR] loss spike in run {HOSTILE_RUN} rank 0"  # plain text


def test_dingtalk_escapes_the_markdown_body():
    body = _send_hostile("dingtalk", reply=b'{"errcode":0,"errmsg":"ok"}')
    text = body["markdown"]["text"]
    assert "<" not in text and ">" not in text.replace("\n> ", "\n"), text
    assert "### [ERROR] loss spike in run &lt;!channel&gt; look" in text
    assert "&lt;!everyone&gt;" in text


def test_json_carries_names_as_data_unchanged():
    body = _send_hostile("json")
    assert body["finding"]["run"] == HOSTILE_RUN
    assert body["finding"]["message"] == "loss rose <!here> & fell"
    assert body["run"]["model"] == "<!everyone>"


def test_feishu_payload_and_signature():
    before = int(time.time())
    with Receiver(reply=b'{"code":0,"msg":"success"}') as rx:
        sender, _ = send_one(rx.url, "feishu", secret=SECRET)
        (req,) = rx.wait_for(1)
        sender.close()
    body = req.json()
    assert body["msg_type"] == "post"
    post = body["content"]["post"]["en_us"]
    assert post["title"].startswith("[ERROR] loss spike")
    assert all(cell["tag"] == "text" for row in post["content"] for cell in row)
    # Recompute the signature as Feishu does: key = timestamp + "\n" + secret, empty message.
    ts = int(body["timestamp"])
    assert before <= ts <= int(time.time())
    key = f"{ts}\n{SECRET}".encode()
    expected = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    assert body["sign"] == expected
    assert sender.stats["sent"] == 1


def test_dingtalk_payload_and_signature():
    with Receiver(reply=b'{"errcode":0,"errmsg":"ok"}') as rx:
        url = rx.url + "?access_token=tok123"
        sender, _ = send_one(url, "dingtalk", secret=SECRET)
        (req,) = rx.wait_for(1)
        sender.close()
    body = req.json()
    assert body["msgtype"] == "markdown"
    assert body["markdown"]["title"].startswith("[ERROR] loss spike")
    assert "**Suggestion:**" in body["markdown"]["text"]
    assert req.query["access_token"] == "tok123"
    ts_ms = req.query["timestamp"]
    assert abs(int(ts_ms) / 1000 - time.time()) < 30
    # parse_qsl already URL-decoded the sign: compare with the raw base64.
    msg = f"{ts_ms}\n{SECRET}".encode()
    expected = base64.b64encode(hmac.new(SECRET.encode(), msg, hashlib.sha256).digest()).decode()
    assert req.query["sign"] == expected


def test_json_payload_and_signature():
    with Receiver() as rx:
        sender, _ = send_one(rx.url, "json", secret=SECRET)
        (req,) = rx.wait_for(1)
        sender.close()
    body = req.json()
    assert body["event"] == "finding.new"
    assert body["finding"]["detector"] == "TS101"
    assert body["finding"]["evidence"]["loss"] == "NaN"  # NaN survives as a string
    assert body["run"]["last_step"] == 140
    ts = req.headers["X-Tunescope-Timestamp"]
    mac = hmac.new(SECRET.encode(), ts.encode() + b"." + req.body, hashlib.sha256)
    assert req.headers["X-Tunescope-Signature"] == "sha256=" + mac.hexdigest()
    assert req.headers["X-Tunescope-Delivery"] == body["id"]
    assert verify_json_signature(SECRET, req.body, ts, req.headers["X-Tunescope-Signature"])
    assert not verify_json_signature("wrong", req.body, ts, req.headers["X-Tunescope-Signature"])
    tampered = req.body.replace(b"TS101", b"TS102")
    assert not verify_json_signature(SECRET, tampered, ts, req.headers["X-Tunescope-Signature"])
    stale = str(int(ts) - 3600)
    sig = (
        "sha256="
        + hmac.new(SECRET.encode(), stale.encode() + b"." + req.body, "sha256").hexdigest()
    )
    assert not verify_json_signature(SECRET, req.body, stale, sig)


def test_unsigned_json_has_no_signature_header():
    with Receiver() as rx:
        sender, _ = send_one(rx.url, "json", secret="")
        (req,) = rx.wait_for(1)
        sender.close()
    assert "X-Tunescope-Signature" not in req.headers


def test_500_then_success_is_retried_once_and_delivered_once(tmp_path):
    with Receiver(statuses=[500]) as rx:
        sender, log = send_one(rx.url, "json", outbox=tmp_path / "outbox.jsonl")
        assert sender.flush(10)
        time.sleep(0.1)  # nothing more should arrive
        sender.close()
        assert len(rx.requests) == 2
        assert rx.answered == [500, 200]
        first, second = rx.requests
        # The same alert, with the same delivery id, re-sent.
        assert first.headers["X-Tunescope-Delivery"] == second.headers["X-Tunescope-Delivery"]
    assert sender.stats == {"sent": 1, "rejected": 0, "kept": 0, "retries": 1}
    assert any("HTTP 500" in line and "retry 1/2" in line for line in log)
    assert not (tmp_path / "outbox.jsonl").exists()


def test_4xx_is_reported_and_not_retried(tmp_path):
    with Receiver(statuses=[403], reply=b"invalid token") as rx:
        sender, log = send_one(rx.url, "slack", outbox=tmp_path / "outbox.jsonl")
        assert sender.flush(10)
        sender.close()
        assert len(rx.requests) == 1
    assert sender.stats["rejected"] == 1 and sender.stats["sent"] == 0
    assert any("rejected" in line and "HTTP 403 invalid token" in line for line in log)
    assert not (tmp_path / "outbox.jsonl").exists()


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_and_the_alert_is_kept(tmp_path, code):
    """urllib would re-send a POST answered 301/302/303 as a GET without its
    body (and the GET's 200 looked like a delivery); 307/308 were refusals.
    Every 3xx is a failed delivery that names the new location, and the alert
    stays in the outbox until the endpoint takes it."""
    box = tmp_path / "outbox.jsonl"
    with Receiver() as elsewhere, Receiver(statuses=[code], location=elsewhere.url) as rx:
        sender, log = send_one(rx.url, "json", outbox=box)
        assert sender.flush(10)
        time.sleep(0.1)  # a followed redirect would arrive now
        sender.close()
        assert [r.method for r in rx.requests] == ["POST"]  # once: not retried at once
        assert elsewhere.requests == []  # neither a GET nor a POST went there
        assert sender.stats == {"sent": 0, "rejected": 0, "kept": 1, "retries": 0}
        where = f"http://127.0.0.1:{elsewhere.port}/…"
        (line,) = [x for x in log if "could not deliver" in x]
        assert f"HTTP {code} redirect to {where}, not followed" in line
        assert "kept in" in line and "sent" not in line.split(":")[0]
        (entry,) = [json.loads(x) for x in box.read_text().splitlines()]
        assert f"HTTP {code} redirect to {where}" in entry["error"]
        assert entry["item"]["alert"]["finding"]["step_start"] == 120

        # the endpoint answers again: the kept alert is delivered, whole
        again = AlertSender([rx.url], format="json", policy=FAST, outbox=box, log=LogLines())
        assert again.retry_outbox() == 1
        assert again.flush(10)
        again.close()
        assert [r.method for r in rx.requests] == ["POST", "POST"]
        assert rx.requests[1].json()["finding"]["step_start"] == 120
        assert rx.requests[1].body == rx.requests[0].body
    assert not box.exists() or box.read_text() == ""


def test_feishu_refusal_in_a_200_answer_is_reported():
    reply = b'{"code":19021,"msg":"sign match fail or timestamp is not within one hour"}'
    with Receiver(reply=reply) as rx:
        sender, log = send_one(rx.url, "feishu", secret="wrong")
        assert sender.flush(10)
        sender.close()
        assert len(rx.requests) == 1
    assert sender.stats["rejected"] == 1
    assert any("code 19021" in line for line in log)


@pytest.mark.parametrize("dead", ["closed-port", "sleeps-past-timeout"])
def test_dead_endpoint_does_not_block_a_second_endpoint(tmp_path, dead):
    # Were sends serialised, each alert would cost the good endpoint >= 5 s here:
    # a 5 s timeout, or 3 retries 2 s apart.
    slow = Receiver(delay=10.0)
    with slow, Receiver() as good:
        bad_url = closed_port_url() if dead == "closed-port" else slow.url
        policy = RetryPolicy(timeout=5.0, retries=3, backoff=2.0, max_backoff=2.0, jitter=0)
        log = LogLines()
        sender = AlertSender(
            [bad_url, good.url],
            format="json",
            policy=policy,
            log=log,
            outbox=tmp_path / "outbox.jsonl",
        )
        t0 = time.monotonic()
        for i in range(3):
            sender.send(finding(step_start=100 + i, step_end=100 + i))
        got = good.wait_for(3, timeout=5)
        elapsed = time.monotonic() - t0
        assert len(got) == 3
        assert elapsed < 4.0, f"the good endpoint waited {elapsed:.2f}s on the dead one"
        assert sender.pending() > 0  # the dead endpoint is still trying
        t1 = time.monotonic()
        left = sender.close(timeout=0.5)
        assert time.monotonic() - t1 < 2.0  # close() does not wait out the dead endpoint
    assert left == 3
    entries = Outbox(tmp_path / "outbox.jsonl").entries()
    assert len(entries) == 3
    assert {e["endpoint"] for e in entries} == {sender.endpoints[0].id}


def test_outbox_is_written_without_urls_and_redelivered(tmp_path):
    box = tmp_path / "outbox.jsonl"
    url_token = "T000/B000/XXXXSECRETPATH"
    with Receiver(statuses=[503, 503]) as rx:
        url = f"{rx.url}/{url_token}"
        policy = RetryPolicy(timeout=1.0, retries=1, backoff=0.01)
        log = LogLines()
        sender = AlertSender(
            [url], format="json", secret=SECRET, policy=policy, outbox=box, log=log
        )
        sender.send(Alert(finding(), run=SUMMARY))
        assert sender.flush(10)
        sender.close()
        assert len(rx.requests) == 2
        text = box.read_text()
        assert url_token not in text and SECRET not in text and "127.0.0.1" not in text
        (entry,) = [json.loads(x) for x in text.splitlines()]
        assert entry["endpoint"] == sender.endpoints[0].id
        assert "HTTP 503" in entry["error"]

        # A later sender for the same URL picks it up and delivers it.
        log2 = LogLines()
        again = AlertSender(
            [url], format="json", secret=SECRET, policy=policy, outbox=box, log=log2
        )
        assert again.retry_outbox() == 1
        assert again.flush(10)
        again.close()
        assert len(rx.requests) == 3
        delivered = rx.requests[-1].json()
        assert delivered["finding"]["step_start"] == 120
        assert delivered["id"] == rx.requests[0].json()["id"]
    assert not box.exists() or box.read_text() == ""
    for line in [*log, *log2]:
        assert SECRET not in line and url_token not in line


def test_outbox_entries_per_endpoint_and_age(tmp_path):
    box = Outbox(tmp_path / "o.jsonl", max_age_s=3600)
    a1, b1 = box.add([("a", {"x": 1}), ("b", {"x": 2})])
    (old,) = box.add([("a", {"x": 3})])
    entries = box.entries()
    for e in entries:
        if e["oid"] == old:
            e["queued_at"] -= 7200
    box._write(entries)
    mine, dropped = box.pending({"a"})
    assert [e["item"]["payload"]["x"] for e in mine] == [1]
    assert dropped == 1
    box.mark_failed(a1, "HTTP 502")
    (e,) = box.pending({"a"})[0]
    assert e["error"] == "HTTP 502" and e["failed_at"] is not None
    box.remove([a1])
    assert [e["oid"] for e in box.entries()] == [b1]
    box.remove([b1])
    assert not box.path.exists()


def test_durable_send_is_journaled_until_delivered(tmp_path):
    """A durable alert sits in the outbox until its endpoint answers; a process
    that dies before that leaves it there for the next start."""
    box = Outbox(tmp_path / "o.jsonl")
    with Receiver(delay=0.5) as rx:
        sender = AlertSender([rx.url], format="json", policy=FAST, outbox=box, log=LogLines())
        sender.send(finding(), durable=True)
        (entry,) = box.entries()  # written before send() returned
        assert entry["error"] is None
        assert sender.retry_outbox() == 0  # already queued: not sent twice
        assert sender.flush(10)
        sender.close()
        assert len(rx.requests) == 1
    assert box.entries() == []

    # "Killed" mid-delivery: the journal entry survives and a new sender delivers it.
    with Receiver() as rx:
        box.add([(sender.endpoints[0].id, Alert(finding(step_start=7)))])
        again = AlertSender([rx.url], format="json", policy=FAST, outbox=box, log=LogLines())
        # Same endpoint id only for the same URL: re-record under this URL's id.
        entries = box.entries()
        for e in entries:
            e["endpoint"] = again.endpoints[0].id
        box._write(entries)
        assert again.retry_outbox() == 1
        (req,) = rx.wait_for(1)
        again.close()
    assert req.json()["finding"]["step_start"] == 7
    assert box.entries() == []


def test_send_never_blocks_on_a_slow_endpoint():
    with Receiver(delay=2.0) as rx:
        sender = AlertSender([rx.url], format="json", policy=FAST, log=LogLines())
        t0 = time.perf_counter()
        for i in range(50):
            sender.send(finding(step_start=i))
        assert time.perf_counter() - t0 < 0.5  # a blocking send would take 2 s per alert
        sender.close(timeout=0.1)


def test_secret_and_url_never_logged():
    with Receiver(statuses=[500, 500, 500, 500]) as rx:
        url = rx.url + "?access_token=tok-very-private"
        sender, log = send_one(url, "dingtalk", secret=SECRET)
        assert sender.flush(10)
        sender.close()
    assert log, "expected progress lines"
    for line in log:
        assert SECRET not in line
        assert "tok-very-private" not in line
    assert "endpoint 1 (http://127.0.0.1:" in log[0]
    assert SECRET not in repr(sender.endpoints[0])
    assert "tok-very-private" not in repr(sender.endpoints[0])


def test_secret_from_environment(monkeypatch):
    monkeypatch.setenv("TUNESCOPE_WEBHOOK_SECRET", SECRET)
    with Receiver() as rx:
        sender = AlertSender([rx.url], format="json", policy=FAST, log=LogLines())
        sender.send(finding())
        (req,) = rx.wait_for(1)
        sender.close()
    ts = req.headers["X-Tunescope-Timestamp"]
    assert verify_json_signature(SECRET, req.body, ts, req.headers["X-Tunescope-Signature"])


def test_format_detection_and_redaction():
    assert detect_format("https://hooks.slack.com/services/T/B/X") == "slack"
    assert detect_format("https://open.feishu.cn/open-apis/bot/v2/hook/abc") == "feishu"
    assert detect_format("https://open.larksuite.com/open-apis/bot/v2/hook/abc") == "feishu"
    assert detect_format("https://oapi.dingtalk.com/robot/send?access_token=x") == "dingtalk"
    assert detect_format("https://example.com/hook") == "json"
    assert redact_url("https://hooks.slack.com/services/T/B/X") == "https://hooks.slack.com/…"
    assert redact_url("http://user:pw@10.0.0.1:8080/x?t=1") == "http://10.0.0.1:8080/…"
    with pytest.raises(ValueError, match="http:// or https://"):
        AlertSender(["ftp://example.com/x"])
    with pytest.raises(ValueError, match="webhook 2 is the same URL"):
        AlertSender(["https://example.com/x", "https://example.com/x"])


def test_alert_round_trips_through_dict():
    a = Alert(finding(), reason="updated", run=SUMMARY, folded=2)
    b = Alert.from_dict(json.loads(json.dumps(a.to_dict())))
    assert b.id == a.id and b.reason == "updated" and b.folded == 2
    assert b.finding.severity is Severity.ERROR and b.finding.key == a.finding.key


# ---- secrets stay out of logs on every failure path ----------------------------------

PATH_TOKEN = "B000/PATHTOKEN8c1f"
ACCESS_TOKEN = "ACCESSTOKEN987aa"


def secret_parts(rx) -> set[str]:
    """Everything secret about the requests ``rx`` saw: the URL's tokens, the
    signing secret, and each request's DingTalk signature (raw and URL-encoded)."""
    parts = {PATH_TOKEN, "PATHTOKEN8c1f", ACCESS_TOKEN, SECRET}
    for req in rx.requests:
        sign = req.query.get("sign")
        if sign:
            parts |= {sign, urllib.parse.quote_plus(sign), urllib.parse.quote(sign, safe="")}
    return parts


@pytest.mark.parametrize("failure", ["refused", "4xx", "5xx", "timeout"])
def test_no_secret_in_logs_or_stderr_when_delivery_fails(tmp_path, capsys, failure):
    delay = 1.0 if failure == "timeout" else 0.0
    statuses = {"4xx": [404], "5xx": [502, 502, 502], "timeout": [200, 200, 200]}.get(failure)
    with Receiver(statuses=statuses, echo=True, delay=delay) as rx:
        base = closed_port_url() if failure == "refused" else rx.url
        url = f"{base}/{PATH_TOKEN}?access_token={ACCESS_TOKEN}"
        log = LogLines()
        policy = RetryPolicy(timeout=0.3, retries=1, backoff=0.01)
        sender = AlertSender(
            [url], format="dingtalk", secret=SECRET, policy=policy, log=log,
            outbox=tmp_path / "outbox.jsonl",
        )  # fmt: skip
        sender.send(Alert(finding(), run=SUMMARY))
        assert sender.flush(10)
        sender.close(timeout=1)
        # The same failure through the default logger, which prints on stderr.
        printing = AlertSender([url], format="dingtalk", secret=SECRET, policy=policy)
        printing.send(Alert(finding(), run=SUMMARY))
        assert printing.flush(10)
        printing.close(timeout=1)
        secrets = secret_parts(rx)
    err = capsys.readouterr().err
    assert log and err
    if failure != "refused":
        assert rx.requests, "the receiver saw no request"
        assert any(r.query.get("sign") for r in rx.requests)
    if failure in ("4xx", "5xx"):
        # The server quoted the signed URL back: the log shows that, scrubbed.
        assert any("no such hook: <redacted>" in line for line in log), log
    text = "\n".join(log) + "\n" + err
    if (tmp_path / "outbox.jsonl").exists():
        text += (tmp_path / "outbox.jsonl").read_text()
    for s in secrets:
        assert s not in text, f"{s!r} leaked into {text!r}"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/services/T000/B000/SECRETTOKEN x",
        "http://127.0.0.1:9/services/T000/B000/SECRETTOKEN\r",
        "http://127.0.0.1:9/services/T000/B000/SECRETTOKEN\n",
        "http://127.0.0.1:9/robot/send?access_token=SECRETTOKEN\t",
        " http://127.0.0.1:9/services/SECRETTOKEN",
        "127.0.0.1:9/services/SECRETTOKEN",
        "SECRETTOKEN/services/x",
    ],
)
def test_bad_url_is_refused_without_echoing_it(url):
    with pytest.raises(ValueError) as info:
        AlertSender([url], log=LogLines())
    message = str(info.value)
    assert "SECRETTOKEN" not in message and "services" not in message
    assert "whitespace or control characters" in message or "http:// or https://" in message


def test_log_scrubs_url_parts_quoted_by_an_error():
    """Error texts from urllib quote the URL's path or query, not the whole URL."""
    log = LogLines()
    url = f"http://127.0.0.1:9/services/{PATH_TOKEN}?access_token={ACCESS_TOKEN}&x=1"
    sender = AlertSender([url], format="json", secret=SECRET, log=log)
    sender._log(f"connection failed: bad request line '/services/{PATH_TOKEN}?access_token'")
    sender._log(f"server said: token {ACCESS_TOKEN} unknown; secret {SECRET}")
    sender._log(f"see {url}")
    sender.close(timeout=0)
    text = "\n".join(log)
    for s in (PATH_TOKEN, "PATHTOKEN8c1f", ACCESS_TOKEN, SECRET):
        assert s not in text
    assert "endpoint 1 (http://127.0.0.1:9/…, json)" in log[2]


def test_hurry_cuts_the_drain_short_and_journals_everything(tmp_path):
    """``hurry()`` (the watch's second Ctrl-C) ends ``close()`` at once; the alert in
    flight and those queued behind it all land in the outbox."""
    with Receiver(delay=30.0) as rx:
        box = tmp_path / "outbox.jsonl"
        policy = RetryPolicy(timeout=25.0, retries=0)
        sender = AlertSender([rx.url], format="json", policy=policy, log=LogLines(), outbox=box)
        for i in range(3):
            sender.send(finding(step_start=10 + i, step_end=10 + i))
        assert len(rx.wait_for(1, timeout=10)) == 1
        threading.Timer(0.3, sender.hurry).start()
        t0 = time.monotonic()
        left = sender.close(timeout=20)
        elapsed = time.monotonic() - t0
    assert elapsed < 3, f"close() waited {elapsed:.1f}s after hurry()"
    assert left == 3
    steps = sorted(e["item"]["alert"]["finding"]["step_start"] for e in Outbox(box).entries())
    assert steps == [10, 11, 12]
