"""A snapshot's blob on disk, as a blob filler (see :mod:`kvol.blobfill`) works on it: opened
with what is left to fill, each part verified before it is written into it, and what is
filled recorded beside it (``<blob>.filled``, the start offsets of filled parts) once the
blob's data is on disk."""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Iterable
from pathlib import Path

from kvol.blob_parts import UNREADABLE, Blob, Part, split
from kvol.content import ContentReader
from kvol.errors import CorruptData
from kvol.model import FileRecord

log = logging.getLogger(__name__)

_FILLED = struct.Struct("<Q")


def open_blob(
    path: Path, volume_id: str, contents: Iterable[tuple[int, FileRecord]]
) -> tuple[tuple[int, int], Blob]:
    """The blob at ``path`` opened for filling, and its (device, inode): its parts those
    of ``contents`` (see :func:`kvol.blob_parts.split`), filled where its record says so."""
    done = _read_filled(_filled_path(path))
    parts = split(contents, done)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:  # the blob's descriptor is the caller's only once this returns
        st = os.fstat(fd)
        log_fd = os.open(
            _filled_path(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
    except BaseException:
        os.close(fd)
        raise
    left = sum(1 for p in parts if not p.filled)
    blob = Blob(path, volume_id, fd, log_fd, parts, [p.start for p in parts], left)
    return (st.st_dev, st.st_ino), blob


def write_part(blob: Blob, part: Part, reader: ContentReader) -> int:
    """Fetch ``part`` (verified against its id) and write it where it goes in the blob;
    returns its size. CorruptData where it cannot be what the blob needs there."""
    if part.index == UNREADABLE:
        raise CorruptData(
            f"the record of {part.record.hash} has parts that do not add up to its size"
        )
    data = reader.read_part(part.record, part.index)
    if len(data) != part.end - part.start:
        raise CorruptData("a part's content has the wrong size")
    view = memoryview(data)
    at = part.start
    while view:
        n = os.pwrite(blob.fd, view, at)
        view, at = view[n:], at + n
    return len(data)


def record_filled(blob: Blob, lock: threading.Lock) -> None:
    """Record the parts of ``blob`` filled since the last record (taken from it under
    ``lock``, the filler's), once they are on disk: a crash before forgets them (each is
    fetched again), never lies. In batches: a sync per part would make a large file's
    first read crawl."""
    with blob.log_lock:
        with lock:
            starts, blob.unlogged = blob.unlogged, []
        if not starts:
            return
        try:
            os.fdatasync(blob.fd)
            os.write(blob.log_fd, b"".join(_FILLED.pack(s) for s in starts))
            os.fsync(blob.log_fd)
        except OSError as exc:
            log.warning("recording the filled parts of %s failed: %s", blob.path, exc)


def _filled_path(blob: Path) -> Path:
    return blob.with_name(blob.name + ".filled")


def _read_filled(path: Path) -> set[int]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return set()
    whole = len(data) - len(data) % _FILLED.size  # a torn last record is not counted
    return {v for (v,) in _FILLED.iter_unpack(data[:whole])}
