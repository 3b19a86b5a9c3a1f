"""A real S3-compatible server on 127.0.0.1 for the object-storage tests and bench.

``S3Server`` runs moto in server mode on an ephemeral port, behind a small HTTP
proxy (also on 127.0.0.1) that forwards every request and records it
(method, path, query, Range header), so a test can count the listings and
object reads a command made. ``broken = True`` makes the proxy cut every
object read short: it sends the headers and half the body, then closes the
connection (a network failure mid-read); listings still pass. A path in
``gone`` is answered 404 NoSuchKey on a read, as S3 answers for an object
deleted after a listing named it.

``env()`` is what a client needs: ``AWS_ENDPOINT_URL`` pointing at the proxy,
and dummy credentials.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    query: str
    range: str | None

    @property
    def is_listing(self) -> bool:
        return self.method == "GET" and ("list-type" in self.query or self.path.count("/") <= 1)

    @property
    def is_object_read(self) -> bool:
        return self.method == "GET" and not self.is_listing


class S3Server:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.requests: list[Request] = []
        self.broken = False
        self.gone: set[str] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> S3Server:
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.upstream = (host, port)
        self._proxy = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._proxy.daemon_threads = True
        self._thread = threading.Thread(target=self._proxy.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._proxy.server_address[1]}"
        self.moto_url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: Any) -> None:
        self._proxy.shutdown()
        self._proxy.server_close()
        self._moto.stop()

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        """A boto3 client straight to the server (not counted by the proxy)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.moto_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def upload(self, folder: Path, bucket: str, prefix: str) -> int:
        """Every file under ``folder`` as ``prefix/relative/path``; returns the count."""
        s3 = self.client()
        n = 0
        for path in sorted(folder.rglob("*")):
            if path.is_file() and ".tunescope" not in path.parts:
                key = f"{prefix}/{path.relative_to(folder).as_posix()}"
                s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
                n += 1
        return n

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()

    def counts(self) -> tuple[int, int]:
        """(listings, object reads) since the last reset."""
        with self._lock:
            reqs = list(self.requests)
        return sum(r.is_listing for r in reqs), sum(r.is_object_read for r in reqs)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Proxy(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                parts = urllib.parse.urlsplit(self.path)
                req = Request(self.command, parts.path, parts.query, self.headers.get("Range"))
                with server._lock:
                    server.requests.append(req)
                if req.is_object_read and urllib.parse.unquote(parts.path) in server.gone:
                    body404 = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code>'
                        b"<Message>The specified key does not exist.</Message></Error>"
                    )
                    self.send_response(404, "Not Found")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(body404)))
                    self.end_headers()
                    self.wfile.write(body404)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn = http.client.HTTPConnection(*server.upstream, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                cut = server.broken and req.is_object_read and len(data) > 1
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                if cut:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data[: len(data) // 2] if cut else data)
                if cut:
                    self.wfile.flush()
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Proxy
