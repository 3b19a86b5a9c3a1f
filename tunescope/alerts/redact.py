"""Webhook URLs hold tokens: checking one without echoing it, showing only its
scheme and host, and scrubbing every part of it from text."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable


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
