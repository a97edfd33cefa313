"""Framing of log entries and checkpoints as stored objects.

An object is a header line ``kvol-<kind> 1 <sha256 of the body>`` followed by the body:
zlib-compressed JSON. The hash catches truncation and corruption before any field is
read; the parsers in :mod:`kvol.model` then check every field.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from typing import Any

from kvol.errors import CorruptData

FORMAT = 1
#: A body that inflates past this is refused (a zip bomb, or not ours).
MAX_INFLATED = 1 << 31


def encode(kind: str, payload: Any) -> bytes:
    body = zlib.compress(json.dumps(payload, separators=(",", ":")).encode(), 1)
    return f"kvol-{kind} {FORMAT} {hashlib.sha256(body).hexdigest()}\n".encode() + body


def decode(kind: str, raw: bytes) -> Any:
    header, sep, body = raw.partition(b"\n")
    fields = header.split(b" ")
    if not sep or len(fields) != 3 or fields[0] != f"kvol-{kind}".encode():
        raise CorruptData(f"not a kvol {kind}: bad header")
    if fields[1] != str(FORMAT).encode():
        raise CorruptData(f"unsupported {kind} format {fields[1]!r}")
    if hashlib.sha256(body).hexdigest().encode() != fields[2]:
        raise CorruptData(f"{kind} failed its checksum (truncated or modified)")
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(body, MAX_INFLATED)
        if inflater.unconsumed_tail:
            raise CorruptData(f"{kind} inflates past {MAX_INFLATED} bytes")
        return json.loads(text)
    except (zlib.error, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptData(f"{kind} body is unreadable: {exc}") from exc
