"""What a blob filler (see :mod:`kvol.blobfill`) knows of one blob: its parts, each a range
of the blob and the part of a file's content that goes there, and the reads of the blob
held until the parts under them are filled."""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kvol.model import FileRecord
from kvol.repo import Repo

#: The index of the one part of a file whose record does not add up (see :func:`split`).
UNREADABLE = -1


@dataclass(eq=False, slots=True)
class Part:
    """One part of one file: where it goes in the blob and what it must be. (One per
    file of a volume, made at every cold start: slots, and no list until a read waits.)"""

    start: int
    end: int
    record: FileRecord
    index: int
    filled: bool = False
    running: bool = False
    #: Events waiting for this part (answered once every part they wait for is in).
    waiters: list[Wait] | None = None


@dataclass(eq=False)
class Wait:
    """A read of the blob, held until the parts under its range are filled."""

    fd: int
    left: int
    ok: bool = True
    since: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class Blob:
    """A blob being watched: its descriptors (the blob's and its record's), its parts in
    the order of the blob, and how many of them are left to fill."""

    path: Path
    volume_id: str
    fd: int
    log_fd: int
    parts: list[Part]
    starts: list[int]
    left: int
    repo: Repo | None = None  # None until the volume is registered
    #: Starts of parts filled and not recorded yet (see kvol.blob_file.record_filled).
    unlogged: list[int] = field(default_factory=list)
    #: No longer watched: what is left to fill is no longer counted as pending.
    closed: bool = False
    log_lock: threading.Lock = field(default_factory=threading.Lock)

    def after(self, part: Part, count: int) -> list[Part]:
        """Up to ``count`` parts of the same file after ``part`` not filled or filling."""
        i = bisect.bisect_left(self.starts, part.start)
        return [
            q
            for q in self.parts[i + 1 : i + 1 + count]
            if q.record is part.record and not q.filled and not q.running
        ]

    def under(self, offset: int, count: int) -> list[Part]:
        """The parts a read of ``count`` bytes at ``offset`` touches."""
        i = max(0, bisect.bisect_right(self.starts, offset) - 1)
        found = []
        while i < len(self.parts) and self.parts[i].start < offset + count:
            if self.parts[i].end > offset:
                found.append(self.parts[i])
            i += 1
        return found


def split(contents: Iterable[tuple[int, FileRecord]], done: set[int]) -> list[Part]:
    """The parts of ``contents`` (``(blob offset, record)`` pairs) in the order of the
    blob, those starting at an offset in ``done`` filled."""
    parts: list[Part] = []
    for offset, record in sorted(contents, key=lambda c: c[0]):
        if not record.adds_up():
            # Its parts would leave a hole or run into the next extent: every read of
            # it fails instead (see kvol.blob_file.write_part).
            parts.append(Part(offset, offset + record.size, record, UNREADABLE))
            continue
        at = offset
        for i, p in enumerate(record.parts):
            if p.length:
                parts.append(Part(at, at + p.length, record, i, filled=at in done))
            at += p.length
    return parts


def unfilled_bytes(blob: Blob) -> int:
    return sum(p.end - p.start for p in blob.parts if not p.filled)
