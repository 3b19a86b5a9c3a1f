"""A real HTTP webhook receiver on 127.0.0.1 for the alert tests and the latency bench.

``Receiver`` runs ``http.server.ThreadingHTTPServer`` on an ephemeral port in a
thread, records every POST (path, query, headers, body, arrival time) and
answers as scripted: a list of statuses consumed one per request (then 200),
an optional delay before answering, an optional body (``echo=True``: the
request's path and query, as a server quoting the URL in its error would) and
an optional ``Location`` header (``location``, for redirects). Requests of any
method are recorded, so a redirect followed as a GET would show.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float
    method: str = "POST"

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


class Receiver:
    def __init__(
        self,
        statuses: list[int] | None = None,
        delay: float = 0.0,
        reply: bytes = b'{"ok": true}',
        echo: bool = False,
        location: str | None = None,
    ) -> None:
        self.location = location
        self.statuses = list(statuses or [])
        self.delay = delay
        self.reply = reply
        self.echo = echo
        self.requests: list[Received] = []
        self.answered: list[int] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                parts = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
                item = Received(
                    parts.path, query, dict(self.headers.items()), body, time.time(), self.command
                )
                with receiver._cond:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.requests.append(item)
                    receiver._cond.notify_all()
                if receiver.delay:
                    time.sleep(receiver.delay)
                reply = f"no such hook: {self.path}".encode() if receiver.echo else receiver.reply
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    if receiver.location is not None:
                        self.send_header("Location", receiver.location)
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    return  # the client gave up (timeout): nothing to answer
                with receiver._cond:
                    receiver.answered.append(status)

            do_GET = do_PUT = do_HEAD = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        """Wait until ``n`` requests have arrived; returns them all (may be fewer on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.requests)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/hook"
