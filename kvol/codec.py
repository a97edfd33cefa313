"""Framing of log entries and checkpoints as stored objects.

An object is a header line ``kvol-<kind> 1 <sha256 of the body>`` followed by the body:
zlib-compressed JSON. The hash catches truncation and corruption before any field is
read; the parsers in :mod:`kvol.model` then check every field.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterator
from typing import Any

from kvol.errors import CorruptData

FORMAT = 1
#: A body that inflates past this is refused (a zip bomb, or not ours).
MAX_INFLATED = 1 << 31


#: Items of a large list or object in the payload encoded at a time: the JSON text of a
#: whole entry or checkpoint (tens of MiB at 100,000 files) never exists, only its
#: compressed form.
SLICE = 1024


def encode(kind: str, payload: Any) -> bytes:
    deflate = zlib.compressobj(1)
    body = bytearray()
    for piece in _pieces(payload):
        body += deflate.compress(piece.encode())
    body += deflate.flush()
    return b"".join((f"kvol-{kind} {FORMAT} {hashlib.sha256(body).hexdigest()}\n".encode(), body))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _pieces(payload: Any) -> Iterator[str]:
    """``_dumps(payload)`` in pieces: each large list or object of a top-level object (an
    entry's operations, a checkpoint's files) a slice of its items at a time. A value
    that is an iterator of lists is encoded as the one list they make together, each
    made only when its turn comes."""
    if not isinstance(payload, dict) or not all(isinstance(k, str) for k in payload):
        yield _dumps(payload)
        return
    for n, (key, value) in enumerate(payload.items()):
        yield ("{" if n == 0 else ",") + _dumps(key) + ":"
        if isinstance(value, list) and len(value) > SLICE:
            yield "["
            for i in range(0, len(value), SLICE):
                yield ("," if i else "") + _dumps(value[i : i + SLICE])[1:-1]
            yield "]"
        elif isinstance(value, dict) and len(value) > SLICE:
            items = list(value.items())
            yield "{"
            for i in range(0, len(items), SLICE):
                yield ("," if i else "") + _dumps(dict(items[i : i + SLICE]))[1:-1]
            yield "}"
        elif isinstance(value, Iterator):
            yield "["
            first = True
            for some in value:
                if some:
                    yield ("" if first else ",") + _dumps(some)[1:-1]
                    first = False
            yield "]"
        else:
            yield _dumps(value)
    yield "}" if payload else "{}"


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
