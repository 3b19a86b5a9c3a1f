"""Object keys as paths of the local mirror: one file per key, and no two keys
on one file.

An object key is any string (S3 allows up to 1024 bytes of UTF-8, with empty
parts, ``.`` and ``..`` as parts, and a key that is the prefix of another),
while a file name is at most 255 bytes, not empty, not ``.`` or ``..``, and a
path cannot be both a file and a folder. Each ``/``-separated part of a key
becomes one name:

- a part that is a fine file name stays as it is (the usual case, so mirrored
  runs keep readable, stable paths);
- ``%`` and NUL are percent-encoded (``%25``, ``%00``), an empty part is
  ``%``, ``.`` and ``..`` are ``%2E`` and ``%2E%2E``;
- a part longer than NAME_MAX bytes keeps its head and its extension around
  ``%~`` and a hash of the whole part;
- a key that other keys sit below (``runs/a/events`` beside
  ``runs/a/events/rank-0.jsonl``) gets ``%~file`` after its last name.

``%`` followed by two hex digits is what encoding makes and ``%~`` is what
hashing and renaming make, so different keys never share a path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

NAME_MAX = 200  # bytes of a name: 255 less room for ``.NAME.PID.tmp`` while it is written
HEAD = 100  # bytes of a long name kept before its hash
EXT_MAX = 40  # bytes of a long name's extension kept after it
AS_FILE = "%~file"
_SPECIAL = {"": "%", ".": "%2E", "..": "%2E%2E"}
_ESCAPE = re.compile(r"%(25|00)")


def part_name(part: str) -> str:
    """The file name of one part of a key."""
    special = _SPECIAL.get(part)
    if special is not None:
        return special
    name = part.replace("%", "%25").replace("\x00", "%00")
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= NAME_MAX:
        return name
    digest = hashlib.sha256(part.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    head = raw[:HEAD].decode("utf-8", "ignore")  # cut at a character boundary
    dot = name.rfind(".")
    ext = (
        name[dot:]
        if dot > 0 and len(name[dot:].encode("utf-8", "surrogateescape")) <= EXT_MAX
        else ""
    )
    return f"{head}%~{digest}{ext}"


def mirror_paths(keys: Iterable[str]) -> dict[str, str]:
    """Each key's path in the mirror (``/``-separated, relative to it)."""
    keys = list(keys)
    folders = {key[:i] for key in keys for i, c in enumerate(key) if c == "/"}
    out = {}
    for key in keys:
        names = [part_name(p) for p in key.split("/")]
        if key in folders:
            names[-1] += AS_FILE
        out[key] = "/".join(names)
    return out


def key_of_name(name: str) -> str:
    """The key part a name stands for; a hashed name stands for itself."""
    name = name.removesuffix(AS_FILE)
    if "%~" in name:
        return name
    for part, special in _SPECIAL.items():
        if name == special:
            return part
    return _ESCAPE.sub(lambda m: "%" if m.group(1) == "25" else "\x00", name)
