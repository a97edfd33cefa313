"""What the SDK (see :mod:`kvol.volume`) reports of a volume's tree: a :class:`FileEntry` for
each file and directory, as ``listdir``, ``iterdir`` and ``stat`` give them, and the
record of a file to read."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from kvol import paths
from kvol.errors import InvalidArgument, NotFound
from kvol.model import FileRecord, State


class FileEntryType(enum.IntEnum):
    """What a :class:`FileEntry` is. The numbers are Modal's (``modal.FileEntryType``), so
    the members compare equal to its members; they also compare equal to their lowercase
    names (``"file"``, ``"directory"``), which is what ``str()`` gives. A volume holds
    files and directories only: the other members exist for code written against Modal."""

    UNSPECIFIED = 0
    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3
    FIFO = 4
    SOCKET = 5

    def __str__(self) -> str:
        return self.name.lower()

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return other == self.name.lower()
        return int.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return int.__hash__(self)

    @classmethod
    def _missing_(cls, value: object) -> FileEntryType | None:
        # FileEntryType("file") as well as FileEntryType(1).
        if isinstance(value, str):
            for member in cls:
                if member.name.lower() == value:
                    return member
        return None


@dataclass(frozen=True)
class FileEntry:
    """A file or directory of a volume, as ``listdir``/``iterdir`` report it."""

    #: Relative to the volume root, without a leading ``/`` (``data/part-0.parquet``).
    path: str
    type: FileEntryType
    #: Seconds since the epoch; a directory reports its newest file's.
    mtime: float
    #: Bytes; a directory reports the total of the files under it.
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "type": str(self.type), "mtime": self.mtime, "size": self.size}


def show(rel: str) -> str:
    """A path of the volume as messages name it."""
    return "/" + rel


def file_record(state: State, path: str) -> FileRecord:
    """The record of the file at ``path`` (NotFound, or InvalidArgument for a directory)."""
    rel = paths.normalize(path)
    record = state.files.get(rel)
    if record is None:
        if state.is_dir(rel):
            raise InvalidArgument(f"{show(rel)} is a directory, not a file")
        raise NotFound(f"{show(rel)} does not exist in the volume")
    return record


def entry_of(state: State, rel: str) -> FileEntry:
    """The entry of ``rel`` (normalized), a file or a directory (the root too)."""
    if rel in state.files:
        record = state.files[rel]
        return FileEntry(rel, FileEntryType.FILE, record.mtime_ns / 1e9, record.size)
    if rel == "" or state.is_dir(rel):
        mtime = size = 0
        for _, record in state.iter_under(rel):
            mtime = max(mtime, record.mtime_ns)
            size += record.size
        return FileEntry(rel, FileEntryType.DIRECTORY, mtime / 1e9, size)
    raise NotFound(f"{show(rel)} does not exist in the volume")


def entries(state: State, rel: str, recursive: bool) -> list[FileEntry]:
    """Entries under ``rel`` sorted by path; a file yields itself."""
    if rel in state.files:
        return [entry_of(state, rel)]
    if rel and not state.is_dir(rel):
        raise NotFound(f"{show(rel)} does not exist in the volume")
    prefix = rel + "/" if rel else ""
    # One pass over the state gathers every directory's newest mtime and total size.
    dir_mtime: dict[str, int] = {}
    dir_size: dict[str, int] = {}
    files: list[FileEntry] = []
    for path, record in state.iter_under(rel):
        below = path[len(prefix) :]
        if recursive or "/" not in below:
            files.append(FileEntry(path, FileEntryType.FILE, record.mtime_ns / 1e9, record.size))
        for ancestor in paths.ancestors(path):
            if len(ancestor) > len(rel):
                dir_mtime[ancestor] = max(dir_mtime.get(ancestor, 0), record.mtime_ns)
                dir_size[ancestor] = dir_size.get(ancestor, 0) + record.size
    dirs = {d for d in state.all_dirs() if d.startswith(prefix)}
    if not recursive:
        dirs = {d for d in dirs if "/" not in d[len(prefix) :]}
    found = files + [
        FileEntry(d, FileEntryType.DIRECTORY, dir_mtime.get(d, 0) / 1e9, dir_size.get(d, 0))
        for d in dirs
    ]
    found.sort(key=lambda e: e.path)
    return found
