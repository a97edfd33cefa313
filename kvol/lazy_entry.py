"""What a lazy cache entry is on disk (see :mod:`kvol.lazy`): its name, the xattr that makes
it a placeholder, and the fanotify marks that hold its opens until it is filled."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from kvol import fsops
from kvol.fangroup import FAN_MARK_ADD, FAN_MARK_REMOVE, FAN_OPEN_PERM, FAN_PRE_ACCESS, mark
from kvol.model import FileRecord

MASK = FAN_OPEN_PERM | FAN_PRE_ACCESS

#: The xattr that makes an entry a placeholder (its data is not there yet).
PLACEHOLDER_XATTR = "trusted.kvol.lazy"


def entry_name(record: FileRecord) -> str:
    """The name of the content cache's entry of ``record``'s file: its content, and the
    mode and mtime the entry carries."""
    name = f"{record.hash}.{fsops.safe_mode(record.mode):o}.{record.mtime_ns}"
    # A record whose parts do not add up to its size (older versions published some) has
    # an entry of its own, which no fill completes: sharing that of its content, it would
    # give a good file its size, or fail the good file's reads with its own.
    return name if record.adds_up() else f"{name}.{record.size}"


def is_placeholder(path: str | Path, *, follow: bool = False) -> bool:
    """Whether the cache entry at ``path`` still waits for its data (reads no data)."""
    try:
        os.getxattr(path, PLACEHOLDER_XATTR, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.ENOENT):
            return False
        raise
    return True


def is_placeholder_fd(fd: int) -> bool:
    """Whether the open entry ``fd`` still waits for its data."""
    try:
        os.getxattr(fd, PLACEHOLDER_XATTR)
    except OSError as exc:
        # Not knowing is taken as a placeholder: an open that fails, never zeros read.
        return exc.errno not in (errno.ENODATA, errno.ENOTSUP)
    return True


class Marks:
    """The fanotify group whose marks hold the opens of placeholders: ``group`` is its
    descriptor while it is open, else -1 (read at each call, as it changes with the
    filler's life cycle)."""

    def __init__(self) -> None:
        self.group = -1

    def add(self, fd: int, path: str | None = None) -> None:
        """Mark the inode open at ``fd`` (or at ``path`` when ``fd`` is -1)."""
        mark(self.group, FAN_MARK_ADD, MASK, fd, path)

    def remove(self, fd: int) -> None:
        """Take the mark off the inode open at ``fd``."""
        mark(self.group, FAN_MARK_REMOVE, MASK, fd)
