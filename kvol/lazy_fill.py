"""Filling one placeholder of a lazy cache (see :mod:`kvol.lazy`): its content fetched,
each part verified before it is written into the placeholder's own inode, made durable,
and only then the placeholder made a whole entry."""

from __future__ import annotations

import contextlib
import os

from kvol.content import ContentReader
from kvol.errors import CorruptData
from kvol.lazy_entry import PLACEHOLDER_XATTR, Marks
from kvol.lazy_queue import FillJob
from kvol.model import FileRecord


class EntryGone(Exception):
    """The placeholder is no longer the cache's entry."""


def fill(job: FillJob, reader: ContentReader, marks: Marks) -> None:
    """Fill the job's inode; raises EntryGone if it is no longer the entry (evicted)."""
    try:
        fd = os.open(job.path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise EntryGone from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != job.inode:
            raise EntryGone
        _write_parts(reader, job.record, fd)
        os.fsync(fd)
        # The writes moved the mtime, which is part of the entry's identity.
        os.utime(fd, ns=(job.record.mtime_ns, job.record.mtime_ns))
        with contextlib.suppress(OSError):
            os.removexattr(fd, PLACEHOLDER_XATTR)
        os.fsync(fd)
        with contextlib.suppress(OSError):
            marks.remove(fd)
    finally:
        os.close(fd)


def _write_parts(reader: ContentReader, record: FileRecord, fd: int) -> None:
    offset = 0
    for data in reader.iter_parts(record):  # each part verified before it is written
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n
    if offset != record.size:
        raise CorruptData(f"content of {record.hash} has {offset} bytes, not {record.size}")
