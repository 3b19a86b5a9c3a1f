"""Runs roots on object storage: the few operations ingest needs, over fsspec.

A runs root may be a URL (``s3://bucket/prefix``, ``gs://...``, ``az://...``,
or anything fsspec understands). Ingest needs four things of it: one listing
of every object under the prefix (key, size, ETag), and byte ranges of some
of them. This module wraps those over fsspec (s3fs, gcsfs, adlfs), retries
what a network hiccup breaks, and turns every library error into one line
that says what to do. Credentials and endpoints come from each cloud's own
environment and config chain (for S3-compatible servers, ``AWS_ENDPOINT_URL``);
they are never printed or stored here.

fsspec and the cloud packages are the optional extra ``[s3]``: without them a
URL gets one line naming the extra to install.
"""

from __future__ import annotations

import builtins
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunescope.errors import InputError

URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
RETRIES = 3  # tries per request before a network failure is reported
BACKOFF_S = 0.2  # the first wait between tries; doubled after each

# The package each URL scheme needs, for the hint when it is missing.
PACKAGES = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
}


def is_url(runs: object) -> bool:
    """Whether ``runs`` names a location on object storage (not a local path).
    ``file://`` counts as local."""
    if not isinstance(runs, str):
        return False
    m = URL.match(runs)
    return m is not None and m.group(1).lower() != "file"


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a listing: its key relative to the root, size and ETag."""

    rel: str
    size: int
    etag: str | None


class NetworkError(InputError):
    """The store could not be reached (after retries)."""


class Remote:
    """One URL root on object storage.

    ``listings`` and ``reads`` count the requests made, for benchmarks and tests.
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        scheme = URL.match(url).group(1).lower()  # type: ignore[union-attr]  # callers check is_url
        try:
            import fsspec
        except ImportError:
            raise InputError(_missing_extra(url, scheme, "fsspec")) from None
        try:
            self.fs, self.path = fsspec.core.url_to_fs(self.url, skip_instance_cache=True)
            if hasattr(self.fs, "retries"):
                self.fs.retries = 2  # s3fs's own; ours (RETRIES) decide when to give up
        except ImportError as e:
            raise InputError(_missing_extra(url, scheme, e.name or "")) from None
        except ValueError as e:  # an unknown protocol
            raise InputError(
                f"{url}: {_first_line(e)}; pass a local folder or a URL fsspec knows"
            ) from None
        self.path = self.path.rstrip("/")
        self.listings = 0
        self.reads = 0
        self.bytes_read = 0

    # ---- the operations ------------------------------------------------------

    def list(self) -> list[ObjectInfo]:
        """Every object under the root, from one (paginated) listing request."""
        self.listings += 1
        self.fs.invalidate_cache(self.path)  # a poll must see what changed since the last
        found = self._retry(lambda: self.fs.find(self.path, detail=True), "list")
        if not found:  # an empty prefix is an empty root; a missing bucket is an error
            bucket = self.path.split("/", 1)[0]
            if not self._retry(lambda: self.fs.exists(bucket), "list"):
                raise InputError(f"{self.url}: no such bucket ({bucket!r}); check the URL")
        out = []
        prefix = self.path + "/"
        for name, info in found.items():
            if info.get("type") == "directory" or not name.startswith(prefix):
                continue
            etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
            out.append(ObjectInfo(name[len(prefix) :], int(info.get("size") or 0), etag))
        return out

    def read_ranges(
        self, rels: builtins.list[str], starts: builtins.list[int], ends: builtins.list[int]
    ) -> builtins.list[bytes | None]:
        """The bytes ``[start, end)`` of each object, fetched concurrently where
        the filesystem can; None for an object deleted since it was listed. A
        request that fails otherwise is tried again, and after RETRIES tries
        the whole call fails with one line."""
        paths = [f"{self.path}/{r}" for r in rels]
        out: list[bytes | None] = [None] * len(paths)
        todo = list(range(len(paths)))
        error: BaseException | None = None
        for attempt in range(RETRIES):
            if not todo:
                break
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            self.reads += len(todo)
            try:
                got = self.fs.cat_ranges(
                    [paths[i] for i in todo],
                    [starts[i] for i in todo],
                    [ends[i] for i in todo],
                    on_error="return",
                )
            except Exception as e:  # the whole batch failed (e.g. the endpoint is down)
                got = [e] * len(todo)
            failed = []
            for i, value in zip(todo, got, strict=True):
                if isinstance(value, bytes):
                    out[i] = value
                    self.bytes_read += len(value)
                    continue
                if isinstance(value, BaseException):
                    _raise_if_user_error(self.url, value)
                    if isinstance(value, FileNotFoundError):
                        continue  # deleted since the listing: None, no retry

                error = value if isinstance(value, BaseException) else None
                failed.append(i)
            todo = failed
        if todo:
            where = f"{self.url}/{rels[todo[0]]}"
            raise NetworkError(
                f"{where}: cannot read ({_reason(error)}) after {RETRIES} tries; "
                "nothing was cached from it, run the command again"
            )
        return out

    # ---- errors --------------------------------------------------------------

    def _retry(self, call: Callable[[], Any], what: str) -> Any:
        error: BaseException | None = None
        for attempt in range(RETRIES):
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                return call()
            except Exception as e:
                _raise_if_user_error(self.url, e)
                error = e
        raise NetworkError(
            f"{self.url}: cannot {what} ({_reason(error)}) after {RETRIES} tries; "
            "check the network and the endpoint (AWS_ENDPOINT_URL), then run again"
        )


def _raise_if_user_error(url: str, e: BaseException) -> None:
    """Errors no retry can fix (credentials, a missing bucket), as one line."""
    name = type(e).__name__
    text = _first_line(e)
    if name in ("NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError") or (
        "credential" in text.lower() and not isinstance(e, OSError | TimeoutError)
    ):
        raise InputError(
            f"{url}: no credentials found; set them the usual way for this cloud "
            "(for S3: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an "
            "instance role) and, for an S3-compatible server, AWS_ENDPOINT_URL"
        ) from None
    if isinstance(e, PermissionError) or name in ("ClientAuthenticationError",):
        raise InputError(
            f"{url}: access denied ({text}); check the credentials and that they may "
            "list and read this bucket"
        ) from None
    if "NoSuchBucket" in text or (isinstance(e, FileNotFoundError) and "bucket" in text.lower()):
        bucket = url.split("://", 1)[1].split("/", 1)[0]
        raise InputError(f"{url}: no such bucket ({bucket!r}); check the URL") from None


def _reason(e: BaseException | None) -> str:
    if e is None:
        return "no answer"
    text = _first_line(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _missing_extra(url: str, scheme: str, missing: str) -> str:
    package = PACKAGES.get(scheme, missing or "fsspec")
    how = (
        "pip install -e '.[s3]' in a clone of tunescope"
        if package == "s3fs"
        else f"pip install fsspec {package}"
    )
    return f"{url}: reading runs from {scheme}:// needs {package}; {how}"
