"""Value types of a volume: limits, metadata, file records, log entries, and state.

Everything read back from a store passes through the ``from_*`` parsers here, which
check every field before anything is built: a malformed or tampered object is rejected
whole (:class:`kvol.errors.CorruptData`), never half-applied.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from kvol import paths
from kvol.errors import CorruptData, InvalidArgument, InvalidPath

HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_is_hash = HASH_RE.fullmatch  # whole string: "$" alone would take a trailing newline
VOLUME_ID_RE = re.compile(r"^[0-9a-f]{32}$")
#: Sizes, offsets and times must fit the signed 64-bit fields of the system calls that
#: apply them (a larger mtime would fail in utime halfway through a reload).
INT64_LIMIT = 1 << 63

# -- limits and metadata ------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Per-volume limits, enforced at commit. ``None`` means unlimited."""

    max_files: int | None = None
    max_bytes: int | None = None
    max_files_per_directory: int | None = None
    max_file_size: int | None = None

    FIELDS = ("max_files", "max_bytes", "max_files_per_directory", "max_file_size")

    def __post_init__(self) -> None:
        # Checked at construction, so a malformed limit is never written to a store.
        for name in self.FIELDS:
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or not 0 <= value < INT64_LIMIT):
                raise InvalidArgument(f"limit {name} must be a non-negative integer, not {value!r}")

    @classmethod
    def for_version(cls, version: int) -> Limits:
        """Modal's published limits for that volume version."""
        if version == 1:
            return cls(max_files=500_000)
        if version == 2:
            return cls(max_files_per_directory=32_768, max_file_size=1 << 40)
        raise InvalidArgument(f"volume version must be 1 or 2, not {version!r}")

    def merged(self, overrides: Limits | None) -> Limits:
        if overrides is None:
            return self
        values = {
            f: getattr(overrides, f) for f in self.FIELDS if getattr(overrides, f) is not None
        }
        return replace(self, **values)

    def to_dict(self) -> dict[str, int | None]:
        return {f: getattr(self, f) for f in self.FIELDS}

    @classmethod
    def from_dict(cls, data: Any) -> Limits:
        if not isinstance(data, dict):
            raise CorruptData("limits must be an object")
        values: dict[str, int | None] = {}
        for name in cls.FIELDS:
            value = data.get(name)
            if value is not None and (not _is_int(value) or value < 0):
                raise InvalidArgument(f"limit {name} must be a non-negative integer, not {value!r}")
            values[name] = value
        unknown = set(data) - set(cls.FIELDS)
        if unknown:
            raise InvalidArgument(f"unknown limit(s) {sorted(unknown)}")
        return cls(**values)


#: Format of volumes this version creates. 2: every log entry names its volume and its
#: seq, every checkpoint its volume, and readers require it. 1 (older volumes): entries
#: may lack them, and are checked where they have them.
VOLUME_FORMAT = 2
_VOLUME_FORMATS = (1, 2)


@dataclass(frozen=True)
class VolumeMeta:
    id: str
    version: int
    limits: Limits
    created: float
    chunk_size: int
    format: int = 1

    @property
    def binds_entries(self) -> bool:
        """Must every entry and checkpoint name its volume (and an entry its seq)?"""
        return self.format >= 2

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": self.format,
                "id": self.id,
                "version": self.version,
                "limits": self.limits.to_dict(),
                "created": self.created,
                "chunk_size": self.chunk_size,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> VolumeMeta:
        data = _load_json(raw, "volume metadata")
        try:
            meta = cls(
                id=str(data["id"]),
                version=int(data["version"]),
                limits=Limits.from_dict(data.get("limits", {})),
                created=float(data["created"]),
                chunk_size=int(data["chunk_size"]),
                format=data.get("format", 1),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CorruptData(f"volume metadata is malformed: {exc}") from exc
        except InvalidArgument as exc:  # malformed limits: the stored object's fault
            raise CorruptData(f"volume metadata is malformed: {exc}") from exc
        if not VOLUME_ID_RE.match(meta.id) or meta.version not in (1, 2) or meta.chunk_size <= 0:
            raise CorruptData("volume metadata is malformed")
        if not _is_int(meta.format) or meta.format not in _VOLUME_FORMATS:
            raise CorruptData(
                f"volume metadata has format {meta.format!r}, which this version of kvol "
                f"does not know (it reads {', '.join(map(str, _VOLUME_FORMATS))})"
            )
        return meta


# -- file records ---------------------------------------------------------------------------

PartKind = Literal["b", "p"]


@dataclass(frozen=True, slots=True)
class Part:
    """A piece of a file's content: a whole blob ("b") or a range of a pack ("p")."""

    kind: PartKind
    obj: str
    offset: int
    length: int

    def to_list(self) -> list[Any]:
        return [self.kind, self.obj, self.offset, self.length]

    @classmethod
    def from_list(cls, data: Any, checked_id: str | None = None) -> Part:
        """Parse a stored part; ``checked_id`` is a content id known well-formed (a
        one-blob file's object is its own content id, checked already)."""
        # Checked field by field without helper calls: a volume's state parses one part
        # per file, and this runs at every cold start.
        if type(data) is not list or len(data) != 4:
            raise CorruptData(f"malformed content part {data!r}")
        kind, obj, offset, length = data
        if checked_id is not None and obj == checked_id:
            obj = checked_id  # one string for both: a state holds one record per file
        elif type(obj) is not str or not _is_hash(obj):
            raise CorruptData(f"malformed content part {data!r}")
        if (
            (kind != "p" and kind != "b")
            or type(offset) is not int
            or type(length) is not int
            or not 0 <= offset < INT64_LIMIT
            or not 0 <= length < INT64_LIMIT
        ):
            raise CorruptData(f"malformed content part {data!r}")
        if kind == "b" and offset != 0:
            raise CorruptData(f"blob part with an offset {data!r}")
        return cls(kind, obj, offset, length)


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One file of a volume: its metadata and where its content is."""

    size: int
    mtime_ns: int
    mode: int
    #: Content id: digest of the content for single-part files, of the size and part ids
    #: otherwise (kvol.content.content_id).
    hash: str
    parts: tuple[Part, ...]

    def to_list(self) -> list[Any]:
        return [self.size, self.mtime_ns, self.mode, self.hash, [p.to_list() for p in self.parts]]

    def adds_up(self) -> bool:
        """Do the parts cover exactly the size? (A record of the log may not: see
        :meth:`from_list`; such a file fails when read.)"""
        return sum(p.length for p in self.parts) == self.size

    @classmethod
    def from_list(cls, data: Any, *, check_size: bool = True) -> FileRecord:
        """Parse a stored record. ``check_size=False`` (records of the log) accepts parts
        that do not add up to the size: such a file fails when read, not when parsed."""
        if type(data) is not list or len(data) != 5:
            raise CorruptData("malformed file record")
        size, mtime_ns, mode, digest, raw_parts = data
        # Exact types: JSON's booleans are ints to isinstance, never sizes or modes.
        if (
            type(size) is not int
            or type(mtime_ns) is not int
            or type(mode) is not int
            or not 0 <= size < INT64_LIMIT
            or not -INT64_LIMIT <= mtime_ns < INT64_LIMIT
            or not 0 <= mode <= 0o7777
            or type(digest) is not str
            or not _is_hash(digest)
            or type(raw_parts) is not list
        ):
            raise CorruptData("malformed file record")
        # In the log, parts that do not add up to the size (older versions could publish
        # such a record) make that one file unreadable, checked when it is read: rejecting
        # the whole entry would make every file of the volume unreadable with it.
        if len(raw_parts) == 1:  # most files: one blob, or one range of a pack
            part = Part.from_list(raw_parts[0], digest)
            if check_size and part.length != size:
                raise CorruptData("file record parts do not add up to its size")
            return cls(size, mtime_ns, mode, digest, (part,))
        parts = tuple(Part.from_list(p) for p in raw_parts)
        if check_size and sum(p.length for p in parts) != size:
            raise CorruptData("file record parts do not add up to its size")
        if any(p.kind == "p" for p in parts):
            raise CorruptData("a packed file must have exactly one part")
        return cls(size, mtime_ns, mode, digest, parts)


# -- log entries ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PutOp:
    path: str
    record: FileRecord


@dataclass(frozen=True, slots=True)
class DeleteOp:
    """Remove ``path``: a file, or a directory with everything under it.

    Only read from entries written by older versions: applied recursively at read time it
    would also remove files another writer added under the directory meanwhile, so new
    code deletes with :class:`UnlinkOp` and :class:`RmdirOp` instead.
    """

    path: str


@dataclass(frozen=True, slots=True)
class MkdirOp:
    path: str


@dataclass(frozen=True, slots=True)
class UnlinkOp:
    """Remove the file at ``path`` if a file is there; a directory there is left alone."""

    path: str


@dataclass(frozen=True, slots=True)
class RmdirOp:
    """Remove the explicit directory record at ``path`` if nothing is left under it.

    A writer deleting a tree names every file and directory it saw (deepest first), so a
    file someone else added under the directory meanwhile keeps the directory alive.
    """

    path: str


Op = PutOp | DeleteOp | MkdirOp | UnlinkOp | RmdirOp


@dataclass(frozen=True)
class Writer:
    id: str
    host: str
    pid: int
    #: The Kubernetes pod ("namespace/name") whose working copy this is, if any: a pod
    #: is one writer however many copies (mounts, plugin restarts) it commits from.
    pod: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "host": self.host, "pid": self.pid}
        if self.pod is not None:
            data["pod"] = self.pod
        return data


@dataclass(frozen=True)
class Entry:
    """One commit: the operations it applies, in order, and who made it."""

    ops: tuple[Op, ...]
    time: float
    writer: Writer
    base: int
    message: str | None = None
    #: The volume and log position the entry was written for: a copy of it anywhere else
    #: is detected. None only in entries of older versions.
    volume: str | None = None
    seq: int | None = None

    def bound(self, volume: str, seq: int) -> Entry:
        return replace(self, volume=volume, seq=seq)

    def to_payload(self) -> dict[str, Any]:
        ops: list[list[Any]] = []
        for op in self.ops:
            if isinstance(op, PutOp):
                ops.append(["put", op.path, *op.record.to_list()])
            elif isinstance(op, DeleteOp):
                ops.append(["del", op.path])
            elif isinstance(op, UnlinkOp):
                ops.append(["rm", op.path])
            elif isinstance(op, RmdirOp):
                ops.append(["rmdir", op.path])
            else:
                ops.append(["dir", op.path])
        payload: dict[str, Any] = {
            "time": self.time,
            "writer": self.writer.to_dict(),
            "base": self.base,
            "message": self.message,
            "ops": ops,
        }
        if self.volume is not None:
            payload["volume"] = self.volume
        if self.seq is not None:
            payload["seq"] = self.seq
        return payload

    @classmethod
    def from_payload(cls, data: Any) -> Entry:
        if not isinstance(data, dict):
            raise CorruptData("log entry is not an object")
        try:
            raw_ops = data["ops"]
            writer_data = data["writer"]
            # Absent in entries of older versions.
            pod = writer_data.get("pod") if isinstance(writer_data, dict) else None
            writer = Writer(
                str(writer_data["id"]),
                str(writer_data["host"]),
                int(writer_data["pid"]),
                None if pod is None else str(pod),
            )
            when = float(data["time"])
            base = int(data["base"])
            message = data.get("message")
            volume = data.get("volume")
            seq = data.get("seq")
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CorruptData(f"log entry is malformed: {exc}") from exc
        if volume is not None and not (isinstance(volume, str) and VOLUME_ID_RE.match(volume)):
            raise CorruptData("log entry names a malformed volume id")
        if seq is not None and not (_is_int(seq) and 0 < seq < INT64_LIMIT):
            raise CorruptData("log entry names a malformed seq")
        if message is not None and not isinstance(message, str):
            raise CorruptData("log entry message is not a string")
        if not math.isfinite(when):
            raise CorruptData("log entry time is not a finite number")
        if not isinstance(raw_ops, list):
            raise CorruptData("log entry ops is not a list")
        ops: list[Op] = []
        for raw in raw_ops:
            if not isinstance(raw, list) or not raw or not isinstance(raw[0], str):
                raise CorruptData("malformed log entry operation")
            kind = raw[0]
            path = _entry_path(raw[1] if len(raw) > 1 else None)
            if kind == "put" and len(raw) == 7:
                ops.append(PutOp(path, FileRecord.from_list(raw[2:], check_size=False)))
            elif kind == "del" and len(raw) == 2:
                ops.append(DeleteOp(path))
            elif kind == "dir" and len(raw) == 2:
                ops.append(MkdirOp(path))
            elif kind == "rm" and len(raw) == 2:
                ops.append(UnlinkOp(path))
            elif kind == "rmdir" and len(raw) == 2:
                ops.append(RmdirOp(path))
            else:
                raise CorruptData(f"unknown log entry operation {kind!r}")
        return cls(tuple(ops), when, writer, base, message, volume, seq)


def _entry_path(value: Any) -> str:
    if not isinstance(value, str):
        raise CorruptData("log entry path is not a string")
    try:
        return paths.check(value)
    except InvalidPath as exc:
        raise CorruptData(f"log entry holds an unsafe path: {exc}") from exc


# -- state ----------------------------------------------------------------------------------


class State:
    """All files and explicit directories of a volume at one commit."""

    __slots__ = ("_under", "dirs", "files", "seq")

    def __init__(
        self,
        seq: int = 0,
        files: MutableMapping[str, FileRecord] | None = None,
        dirs: set[str] | None = None,
    ) -> None:
        self.seq = seq
        # A dict, or a mapping that parses records when looked up (Index.committed_state).
        self.files: MutableMapping[str, FileRecord] = files if files is not None else {}
        #: Directories recorded explicitly (so empty ones survive); others are implied by files.
        self.dirs: set[str] = dirs if dirs is not None else set()
        # Directory -> number of files and explicit directories below it; built on first
        # use so that "is there a directory here?" costs O(depth), not O(files).
        self._under: dict[str, int] | None = None

    def copy(self) -> State:
        return State(self.seq, dict(self.files), set(self.dirs))

    # -- applying entries -------------------------------------------------------------

    def apply(self, entry: Entry, seq: int, touched: set[str] | None = None) -> None:
        """Apply one entry in place: last write wins. ``touched`` collects changed paths."""
        for op in entry.ops:
            if isinstance(op, PutOp):
                path = op.path
                ancestors = paths.ancestors(path)  # once: this runs for every file
                self._make_room(path, touched, ancestors=ancestors)
                if path not in self.files:
                    self._count(path, +1, ancestors)
                self.files[path] = op.record
                _note(touched, path)
            elif isinstance(op, UnlinkOp):
                if op.path in self.files:
                    del self.files[op.path]
                    self._count(op.path, -1)
                    _note(touched, op.path)
            elif isinstance(op, RmdirOp):
                if op.path in self.dirs and self._under_index().get(op.path, 0) == 0:
                    self.dirs.discard(op.path)
                    self._count(op.path, -1)
                    _note(touched, op.path)
            elif isinstance(op, DeleteOp):
                self.remove_tree(op.path, touched)
            else:
                self._make_room(op.path, touched, for_dir=True)
                if op.path not in self.dirs:
                    self.dirs.add(op.path)
                    self._count(op.path, +1)
                    _note(touched, op.path)
        self.seq = seq

    def is_dir(self, path: str) -> bool:
        return path in self.dirs or self._under_index().get(path, 0) > 0

    def _make_room(
        self,
        path: str,
        touched: set[str] | None,
        for_dir: bool = False,
        ancestors: list[str] | None = None,
    ) -> None:
        """A file where an ancestor directory must be goes away, and so does a directory
        tree where a file must be, and a file where a directory must be (last write wins)."""
        for ancestor in paths.ancestors(path) if ancestors is None else ancestors:
            if ancestor in self.files:
                self.remove_tree(ancestor, touched)
        if for_dir:
            if path in self.files:
                self.remove_tree(path, touched)
        elif path not in self.files and self.is_dir(path):
            # A file here has nothing under it (the state never holds both), so the
            # rewrite of a file, a reload's usual change, skips the directory table
            # built over every file.
            self.remove_tree(path, touched)

    def remove_tree(self, path: str, touched: set[str] | None = None) -> None:
        """Remove a file, or a directory and everything under it."""
        if path in self.files:
            del self.files[path]
            self._count(path, -1)
            _note(touched, path)
        if not self.is_dir(path):
            return
        prefix = path + "/"
        for p in [p for p in self.files if p.startswith(prefix)]:
            del self.files[p]
            self._count(p, -1)
            _note(touched, p)
        for d in [d for d in self.dirs if d == path or d.startswith(prefix)]:
            self.dirs.discard(d)
            self._count(d, -1)
            _note(touched, d)

    def _under_index(self) -> dict[str, int]:
        if self._under is None:
            # By parent first: a volume has far fewer directories than files, and this
            # runs over every file the first time a reload asks for a directory.
            parents = Counter(p.rpartition("/")[0] for p in self.files)
            parents.update(d.rpartition("/")[0] for d in self.dirs)
            under: dict[str, int] = {}
            for parent, n in parents.items():
                while parent:
                    under[parent] = under.get(parent, 0) + n
                    parent = parent.rpartition("/")[0]
            self._under = under
        return self._under

    def _count(self, path: str, delta: int, ancestors: list[str] | None = None) -> None:
        if self._under is None:
            return
        for a in paths.ancestors(path) if ancestors is None else ancestors:
            left = self._under.get(a, 0) + delta
            if left:
                self._under[a] = left
            else:
                self._under.pop(a, None)

    # -- queries --------------------------------------------------------------------------

    def all_dirs(self) -> set[str]:
        """Explicit directories and every directory implied by a file."""
        return set(self.dirs) | {d for d, n in self._under_index().items() if n > 0}

    @property
    def total_bytes(self) -> int:
        return sum(r.size for r in self.files.values())

    def iter_under(self, directory: str) -> Iterator[tuple[str, FileRecord]]:
        for path, record in self.files.items():
            if paths.is_under(path, directory):
                yield path, record

    def children_counts(self) -> dict[str, int]:
        """Number of direct entries (files and directories) of every directory ("" is the root)."""
        counts: dict[str, int] = {}
        for name in list(self.files) + list(self.all_dirs()):
            parent = paths.parent(name)
            counts[parent] = counts.get(parent, 0) + 1
        return counts

    # -- serialization --------------------------------------------------------------------

    def to_payload(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "files": {p: r.to_list() for p, r in sorted(self.files.items())},
            "dirs": sorted(self.dirs),
        }

    @classmethod
    def from_payload(cls, data: Any) -> State:
        if not isinstance(data, dict):
            raise CorruptData("checkpoint is not an object")
        try:
            seq = int(data["seq"])
            raw_files = data["files"]
            raw_dirs = data["dirs"]
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CorruptData(f"checkpoint is malformed: {exc}") from exc
        if not isinstance(raw_files, dict) or not isinstance(raw_dirs, list):
            raise CorruptData("checkpoint is malformed")
        files = {
            _entry_path(p): FileRecord.from_list(r, check_size=False) for p, r in raw_files.items()
        }
        dirs = {_entry_path(d) for d in raw_dirs}
        return cls(seq, files, dirs)


def _note(touched: set[str] | None, path: str) -> None:
    if touched is not None:
        touched.add(path)


def now() -> float:
    return time.time()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptData(f"{what} is not valid JSON: {exc}") from exc
