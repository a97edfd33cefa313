"""The index of a working copy: what the volume had at the copy's base, and the stat of
each local file when it was known to match, so unchanged files are never read again.

The index is read at every open and written after every commit, so its encoding is
columnar and binary (see :func:`_encode`): loading 100,000 entries builds no more than
one small object per file, and a file's record is parsed only when something asks for it.

A save of a few changes is not a rewrite: beside the index (its *base*) a *delta* holds
every entry changed since the base was written, and names that base by its digest. Each
save replaces the delta (temp file, fsync, rename), so one rename makes it count, as
for the base; once the changes are many, the base is written whole and the delta goes.
A delta whose base is not the one beside it (a crash between the two) is ignored: the
base written after it holds everything it said.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
import zlib
from array import array
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, replace
from itertools import accumulate
from pathlib import Path
from typing import Any, cast

from kvol import gcpause
from kvol.errors import CorruptData
from kvol.fsops import write_atomically
from kvol.model import HASH_RE, FileRecord, Part, State
from kvol.paths import RESERVED

#: Files modified this close to a scan are hashed again next time: a write within the
#: filesystem's timestamp granularity could otherwise go unseen ("racy" files).
RACY_NS = 2_000_000_000

SigTuple = tuple[int, int, int, int, int]


@dataclass(slots=True)
class Signature:
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int
    mode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Signature:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_mode & 0o7777)

    def to_list(self) -> list[int]:
        return [self.size, self.mtime_ns, self.ino, self.ctime_ns, self.mode]


#: The signature of a file of the volume this copy saw but holds no match of (deleted
#: here, a local version kept over it by a reload, or a snapshot's file, whose stat
#: proves nothing): no file has inode 0, so it never matches, the file is hashed when
#: checked, and a commit publishes what stands there, or the deletion. (No signature at
#: all means the copy never had the file: a local change hid it, and no commit of the
#: copy may delete it.)
UNMATCHED = Signature(0, 0, 0, 0, 0)
_UNMATCHED_KEY: SigTuple = (0, 0, 0, 0, 0)
#: The ``_key`` of an entry whose signature is still only in its row (never compared by
#: value: only this object means it).
_IN_ROW: SigTuple = (-1, -1, -1, -1, -1)


def sig_tuple(st: os.stat_result) -> SigTuple:
    """The fields of a stat that a clean file must keep, for a quick comparison."""
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_mode & 0o7777)


#: A signature packed in 40 bytes (a bytes object of 73), for the commit of many files
#: that holds one per file until the index records them: a tuple of five ints is 250.
_PACKED_SIG = struct.Struct("<5q")


def packed_sig(st: os.stat_result) -> bytes:
    return _PACKED_SIG.pack(*sig_tuple(st))


def unpack_sig(packed: bytes) -> SigTuple:
    size, mtime_ns, ino, ctime_ns, mode = _PACKED_SIG.unpack(packed)
    return (size, mtime_ns, ino, ctime_ns, mode)


class IndexEntry:
    """One file: its record in the volume and the stat it had when it matched.

    ``record``: the file as the volume has it (at base, or as this copy committed it);
    None for a file this copy has never committed. ``sig``: the local file's stat when it
    matched ``record``; None if it never did. ``racy``: hash again at the next scan even
    if the stat matches. ``stat_key`` is ``sig`` as a plain tuple (see :func:`sig_tuple`),
    which scans compare without building an object per file.
    """

    # A record not parsed yet is a row of the loaded columns: ``_table``, ``_row`` (two
    # slots, not a tuple: a tenth of the memory a loaded index of 100,000 files holds).
    # So is a signature not read yet (``_key`` is _IN_ROW): most entries of a large copy
    # are never looked at by a reload or a tracked commit, and a tuple of five ints is a
    # quarter of a loaded entry's memory and most of its loading time. ``_as_loaded``:
    # the signature is still the one in the row (however often read since).
    __slots__ = ("_as_loaded", "_key", "_record", "_row", "_table", "racy")

    def __init__(
        self,
        record: FileRecord | None,
        sig: Signature | SigTuple | bytes | None,
        racy: bool = False,
    ) -> None:
        self._record = record
        self._table: _Table | None = None
        self._row = 0
        self._key: SigTuple | None = None if sig is None else as_stat_key(sig)
        self._as_loaded = False
        self.racy = racy

    @property
    def stat_key(self) -> SigTuple | None:
        key = self._key
        if key is _IN_ROW:
            table = self._table
            assert table is not None  # kept until the signature is read (see record)
            key = self._key = _row_key(table, self._row)
        return key

    @stat_key.setter
    def stat_key(self, value: SigTuple | None) -> None:
        self._key, self._as_loaded = value, False

    @property
    def record(self) -> FileRecord | None:
        if self._record is None and self._table is not None:
            # Parsed once; the loaded row stays, so saving copies it rather than
            # encoding the record again (a reload parses every record).
            self._record = _row_record(self._table, self._row)
        return self._record

    @record.setter
    def record(self, value: FileRecord | None) -> None:
        if self._key is _IN_ROW:
            self.stat_key  # noqa: B018 -- read from the row while it is there
        self._record, self._table = value, None

    @property
    def has_record(self) -> bool:
        return self._table is not None or self._record is not None

    @property
    def has_sig(self) -> bool:
        """Whether the file ever matched (``stat_key`` is not None), without reading a
        signature still in its row."""
        return self._key is not None

    @property
    def sig(self) -> Signature | None:
        return None if self.stat_key is None else Signature(*self.stat_key)

    @sig.setter
    def sig(self, value: Signature | None) -> None:
        self.stat_key = None if value is None else as_stat_key(value)

    def copy(self) -> IndexEntry:
        """An entry of its own with the same values; a record not parsed yet stays so."""
        twin = IndexEntry.__new__(IndexEntry)
        twin._record, twin._table, twin._row = self._record, self._table, self._row
        twin._key, twin._as_loaded, twin.racy = self._key, self._as_loaded, self.racy
        return twin

    def is_clean(self, st: os.stat_result) -> bool:
        return not self.racy and self.stat_key == (
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
            st.st_ctime_ns,
            st.st_mode & 0o7777,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IndexEntry):
            return NotImplemented
        return (self.record, self.stat_key, self.racy) == (other.record, other.stat_key, other.racy)

    def __repr__(self) -> str:
        return f"IndexEntry({self.record!r}, {self.sig!r}, racy={self.racy})"


def as_stat_key(sig: Signature | SigTuple | bytes) -> SigTuple:
    if sig is UNMATCHED:
        return _UNMATCHED_KEY  # one tuple for every file of a snapshot
    if isinstance(sig, tuple):
        return sig
    if isinstance(sig, bytes):
        return unpack_sig(sig)
    return (sig.size, sig.mtime_ns, sig.ino, sig.ctime_ns, sig.mode)


class CommittedFiles(MutableMapping[str, FileRecord]):
    """Path -> record of the entries of an index that have one, each parsed from the
    loaded columns only when looked up; changes made here stay here. The entries are the
    index's own objects: a reload replaces an entry rather than change its record, except
    to the record this mapping gives for that path."""

    __slots__ = ("_items", "_rows")

    def __init__(self, index: Index) -> None:
        # Copied whole, then the few without a record (files never committed) dropped:
        # far faster at 100,000 entries than a comprehension that keeps the others.
        self._items: dict[str, IndexEntry | FileRecord | int] = dict(index._entries)
        self._rows = index._rows
        for path in index._paths_where(_HAS_RECORD, 0):
            del self._items[path]

    def __getitem__(self, path: str) -> FileRecord:
        value = self._items[path]
        if type(value) is int:
            assert self._rows is not None  # a row is only ever one of these columns
            record = self._items[path] = _row_record(self._rows, value)
            return record
        if type(value) is IndexEntry:
            entry_record = value.record
            assert entry_record is not None  # only entries that have one are taken
            return entry_record
        return cast(FileRecord, value)

    def __setitem__(self, path: str, record: FileRecord) -> None:
        self._items[path] = record

    def __delitem__(self, path: str) -> None:
        del self._items[path]

    def __contains__(self, path: object) -> bool:
        return path in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class Index:
    """A working copy's index: its base, its directories, and an entry per file.

    A loaded index makes no entry until one is asked for: until then a file is only its
    row in the loaded columns (``_rows``), so a reload of one file in a large copy never
    builds 100,000 objects. ``files`` makes every entry first (a full scan wants them
    all); a reload goes through :meth:`entry`, :meth:`put` and :meth:`drop`."""

    def __init__(self, volume_id: str, base: int = 0, *, ahead: int = 0) -> None:
        self.volume_id = volume_id
        self.base = base
        #: Every directory of the volume as this copy knows it (explicit and implied).
        self.dirs: set[str] = set()
        #: Explicit directories of the volume (kept so the committed view can be rebuilt).
        self.explicit_dirs: set[str] = set()
        #: The newest commit of this copy's own that landed past ``base + 1`` (others
        #: published in between), or 0: the committed state then holds commits from after
        #: ``base`` too, so replaying the log from ``base`` on it can misjudge a directory
        #: removal that came before them (see WorkingCopy._reload_locked).
        self.ahead = ahead
        #: Path -> its entry, or its row in ``_rows`` while no entry was made for it (the
        #: row as loaded: unchanged since).
        self._entries: dict[str, IndexEntry | int] = {}
        self._rows: _Table | None = None
        #: While some files are rows: every path changed, dropped or made into an entry
        #: since the load, and the row it had then (-1: none). A save or a reload looks
        #: at these, not at every file.
        self._made: dict[str, int] = {}
        self._known: KnownContent | None = None
        #: The base saved or loaded last, which a delta is made against (None: none yet).
        self._base: _Base | None = None

    def __repr__(self) -> str:
        return f"Index({self.volume_id!r}, base={self.base}, files={len(self._entries)})"

    @property
    def files(self) -> dict[str, IndexEntry]:
        """Every file's entry (made now for those that are still only rows)."""
        rows = self._rows
        if rows is not None:
            entries = self._entries
            with gcpause.paused():  # many objects, no cycles (as at load)
                for path, value in entries.items():
                    if type(value) is int:
                        entries[path] = _loaded_entry(rows, value)
            self._rows, self._made = None, {}
        return cast("dict[str, IndexEntry]", self._entries)

    @files.setter
    def files(self, value: dict[str, IndexEntry]) -> None:
        self._entries = cast("dict[str, IndexEntry | int]", value)
        self._rows, self._made = None, {}

    def entry(self, path: str) -> IndexEntry | None:
        """The entry of ``path`` (None: the index has none), made from its row if need be."""
        value = self._entries.get(path)
        if type(value) is int:
            assert self._rows is not None
            self._made[path] = value
            value = self._entries[path] = _loaded_entry(self._rows, value)
        return cast("IndexEntry | None", value)

    def holds(self, path: str) -> bool:
        return path in self._entries

    def put(self, path: str, entry: IndexEntry) -> None:
        self._note(path)
        self._entries[path] = entry

    def drop(self, path: str) -> None:
        self._note(path)
        self._entries.pop(path, None)

    def _note(self, path: str) -> None:
        """``path`` is about to change: remembered with its row, while there are rows."""
        if self._rows is not None and path not in self._made:
            value = self._entries.get(path)
            self._made[path] = value if type(value) is int else -1

    def kept_out(self) -> list[str]:
        """Files of the volume this copy never matched (a record, no signature): a local
        change kept them out, or a reload could not write them."""
        return self._paths_where(_HAS_RECORD | _HAS_SIG, _HAS_RECORD)

    def _paths_where(self, mask: int, flags: int) -> list[str]:
        """Paths whose entry has ``flags`` among the ``mask`` of _HAS_RECORD, _HAS_SIG,
        read from the rows of those never made (the typical row has both: only the
        others are looked at)."""
        entries = self._entries
        rows = self._rows
        # While there are rows, the entries are those of the paths made or changed.
        made = entries if rows is None else {p: entries.get(p) for p in self._made}
        found = [
            p
            for p, e in made.items()
            if isinstance(e, IndexEntry) and _entry_flags(e) & mask == flags
        ]
        if rows is not None and _TYPICAL & mask != flags:
            ints, names = rows.ints, rows.paths
            for row in rows.odd:
                if ints[row * _INTS] & mask == flags and type(entries.get(names[row])) is int:
                    found.append(names[row])
        return found

    def committed_state(self) -> State:
        """The volume as this copy last saw it (base plus its own commits). Its records
        are parsed when looked up: a reload reads those its log entries touch."""
        return State(self.base, CommittedFiles(self), set(self.explicit_dirs))

    def copy_saved_at(self, path: Path, saved_at: Path) -> Index:
        """A copy of this index (entries of its own), saved at ``path`` as this one was
        saved last, at ``saved_at`` (where that save is now: its directory may have moved
        since). The files of that save are copied byte for byte (the base, and its delta
        if it has one), so the copy's first saves are deltas against the same base; a file
        there that is not that base is not copied, the copy is written whole. Changes not
        saved yet are the copy's too, unsaved as here."""
        twin = Index(self.volume_id, self.base, ahead=self.ahead)
        twin.files = {p: e.copy() for p, e in self.files.items()}
        twin.dirs = set(self.dirs)
        twin.explicit_dirs = set(self.explicit_dirs)
        base = self._base
        if base is not None:
            raw = saved_at.read_bytes()
            if raw.startswith(_first_line(_MAGIC, FORMAT, base.digest)):
                write_atomically(path, raw)
                try:
                    delta = delta_path(saved_at).read_bytes()
                except FileNotFoundError:
                    # One left at ``path`` may name the same base (a byte copy has its digest).
                    delta_path(path).unlink(missing_ok=True)
                else:
                    write_atomically(delta_path(path), delta)
                twin._base = replace(base, path=path)
                return twin
        twin.save(path)
        return twin

    def known_content(self) -> KnownContent:
        if self._known is None:
            self._known = KnownContent(self)
        return self._known

    # -- persistence (atomic: temp file, fsync, rename) ---------------------------------------

    def save(self, path: Path) -> None:
        """Save to ``path``: a delta beside the base there when the changes since are few,
        else the whole index as the new base."""
        base = self._base
        if base is not None and base.path == path:
            delta = _delta_pieces(self, base)
            if delta is not None:
                write_atomically(delta_path(path), delta)
                return
        # Every base is told from every other, even of the same entries: a delta left
        # beside a later base of equal content must not count for it.
        header = {**_base_header(self), "generation": secrets.token_hex(8)}
        encoded = _Encoded(self.files, header, _MAGIC, FORMAT, _rows_to_copy(self))
        write_atomically(path, encoded.pieces)
        delta_path(path).unlink(missing_ok=True)  # stale now, and never applied to this base
        # Point the entries at the columns just written: the next save compares with them
        # (and copies them, if it writes a base again).
        self._base = encoded.rebind(self, path)

    @classmethod
    def load(cls, path: Path) -> Index:
        # Loading makes an object or two per file; collections triggered meanwhile would
        # walk them all again and again, to find nothing (they hold no cycles).
        try:
            with gcpause.paused():
                index = _decode(path.read_bytes(), path)
                try:
                    delta = delta_path(path).read_bytes()
                except FileNotFoundError:
                    return index
                _apply_delta(index, delta)
                return index
        except CorruptData as exc:
            raise CorruptData(f"working copy index {path} is unreadable: {exc}") from exc
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
            IndexError,
            struct.error,
            zlib.error,
        ) as exc:
            raise CorruptData(f"working copy index {path} is unreadable: {exc}") from exc


class KnownContent:
    """Content this copy's volume already has, by content id: reused, not sent again.

    Looked up for each new small file. The table is built on first use from the index's
    hashes, without parsing any record, and kept with the index, so a commit of a few
    files does not go through every file again: files this copy publishes are added as
    they land; a file changed any other way is missed, never trusted (a hit counts only
    if the file at the path the table names still holds that very content). It maps the
    first 8 bytes of a content id to a path, about 80 bytes a file."""

    def __init__(self, index: Index) -> None:
        self._index = index
        self._by_hash: dict[int, str] | None = None

    def get(self, content_id: str) -> tuple[Part, ...] | None:
        try:
            key = bytes.fromhex(content_id)
        except ValueError:
            return None  # not a content id
        if len(key) != 32:
            return None
        if self._by_hash is None:
            self._by_hash = by_hash = {}
            for path, entry in self._index.files.items():
                held = _held_hash(entry)
                if held is not None:
                    by_hash[int.from_bytes(held[:8], "little")] = path
        named = self._by_hash.get(int.from_bytes(key[:8], "little"))
        found = None if named is None else self._index.files.get(named)
        if found is None or _held_hash(found) != key:
            return None
        record = found.record
        return None if record is None else record.parts

    def forget(self) -> None:
        """Drop the table (made again on the next lookup)."""
        self._by_hash = None

    def note(self, path: str, entry: IndexEntry) -> None:
        """``entry`` is now the file at ``path`` (a file this copy published)."""
        if self._by_hash is not None:
            held = _held_hash(entry)
            if held is not None:
                self._by_hash[int.from_bytes(held[:8], "little")] = path


def _held_hash(entry: IndexEntry) -> bytes | bytearray | None:
    """The 32 bytes of the content id of the entry's record (None without one)."""
    table = entry._table
    if table is not None:
        row = entry._row
        return table.hashes[row * 32 : row * 32 + 32]
    known = entry._record
    return None if known is None else bytes.fromhex(known.hash)


def record_size(entry: IndexEntry) -> int:
    """The size of the file as the volume has it (0 without a record), without parsing a
    record not parsed yet."""
    table = entry._table
    if table is not None:
        return table.ints[entry._row * _INTS + 6]
    record = entry._record
    return 0 if record is None else record.size


# -- encoding ------------------------------------------------------------------------------
#
# b"kvol-index 3 <sha256 of the body>\n" + body; the body is a sequence of sections, each
# an 8-byte little-endian length and its bytes:
#   header   JSON: volume id, base, directories, entry count, content objects (a delta's,
#            b"kvol-index-delta 1 ...": the base's digest, the paths removed since, the
#            directories added and removed, and the fields that are not per file)
#   paths    the paths, UTF-8, NUL-separated (NUL never occurs in a path)
#   ints     int64 per entry: flags, signature (5), record size, mtime, mode, part count
#   hashes   32 raw bytes of the content id per entry (zeros without a record)
#   parts    int64 per part, in entry order: object number, offset, length

#: Written by every save. 2 is still read (the same, without deltas: a version that
#: reads only 2 refuses 3 rather than miss the delta beside it).
FORMAT = 3
_READ_FORMATS = (b"2", b"3")
_MAGIC = b"kvol-index"
_DELTA_MAGIC = b"kvol-index-delta"
DELTA_FORMAT = 1
DELTA_SUFFIX = ".delta"
#: A save writes a delta while the entries changed or removed since the base are at most
#: this many, or a sixteenth of the base's.
_DELTA_AT_LEAST = 1024
_INTS = 10
_HAS_RECORD, _HAS_SIG, _RACY = 1, 2, 4
_TYPICAL = _HAS_RECORD | _HAS_SIG  # a file committed and matched, not racy
_ZERO_HASH = bytes(32)


def _unsafe_paths(text: str) -> bool:
    """Could any of the NUL-separated paths not be a checked volume path? (empty, "." or
    ".." components, a leading or trailing "/", the reserved top-level directory)"""
    # Every component stands between two slashes here: one search for each bad one.
    slashed = f"/{text.replace(chr(0), '/')}/"
    if "//" in slashed or "/./" in slashed or "/../" in slashed:
        return True
    framed = f"\x00{text}\x00"
    return f"\x00{RESERVED}/" in framed or f"\x00{RESERVED}\x00" in framed


def delta_path(path: Path) -> Path:
    """Where the delta of the index saved at ``path`` goes."""
    return path.with_name(path.name + DELTA_SUFFIX)


def _base_header(index: Index) -> dict[str, Any]:
    return {
        "volume_id": index.volume_id,
        "base": index.base,
        "dirs": sorted(index.dirs),
        "explicit_dirs": sorted(index.explicit_dirs),
        "ahead": index.ahead,
    }


def _encode(index: Index) -> bytes:
    """The whole index as a base (as a save that writes no delta writes it, but for its
    generation)."""
    header = _base_header(index)
    return b"".join(_Encoded(index.files, header, _MAGIC, FORMAT, _rows_to_copy(index)).pieces)


@dataclass(frozen=True)
class _Base:
    """The base last saved or loaded: where, its digest, and its columns and directories
    (a delta holds what differs from them)."""

    path: Path
    digest: str
    table: _Table
    dirs: frozenset[str]
    explicit_dirs: frozenset[str]


class _Encoded:
    """Entries encoded: their columns, and the pieces written.

    Entries unchanged since their columns were loaded from ``table`` (same signature
    object, same racy flag, record not replaced) are copied from those columns a run of
    rows at a time, with the loaded numbering of content objects; only the others are
    encoded one by one (counted in ``one_by_one``)."""

    def __init__(
        self,
        files: dict[str, IndexEntry],
        header: dict[str, Any],
        magic: bytes,
        format_: int,
        table: _Table | None,
    ) -> None:
        self.one_by_one = 0
        # The paths first: their text, a few MiB at 100,000 files, is gone before the
        # columns are built.
        paths = "\x00".join(files).encode("utf-8", "surrogateescape")
        self.objects, self.ints, self.hashes, self.parts = self._columns(files, table)
        header = {
            **header,
            "count": len(files),
            "objects": [kind + obj for kind, obj in self.objects],
        }
        self.digest, sections = _sections(header, paths, self.ints, self.hashes, self.parts)
        self.pieces = [_first_line(magic, format_, self.digest), *sections]

    def rebind(self, index: Index, path: Path) -> _Base:
        """Make every entry's row the one just written to ``path`` (the order of
        ``index.files``): that base. Parsed records stay: copies made from a snapshot's
        index share them."""
        self.pieces = []  # written: the paths' bytes are not needed any more
        # The columns are not changed from here on: the table takes them as they are.
        table = _Table(list(self.objects), self.ints, self.hashes, self.parts)
        table.paths = list(index.files)
        ints, firsts = self.ints, table.first_parts
        first = 0
        for row, entry in enumerate(index.files.values()):
            firsts.append(first)
            if entry._table is not None or entry._record is not None:
                # A signature still in its old row is in this one too (copied from it,
                # or written from it).
                entry._table, entry._row, entry._as_loaded = table, row, True
                first += ints[row * _INTS + 9]
        return _Base(
            path, self.digest, table, frozenset(index.dirs), frozenset(index.explicit_dirs)
        )

    def _columns(
        self, files: dict[str, IndexEntry], table: _Table | None
    ) -> tuple[dict[tuple[str, str], int], array[int], bytearray, array[int]]:
        objects: dict[tuple[str, str], int] = {}
        ints = array("q")
        parts = array("q")
        hashes = bytearray()
        if table is not None:
            objects = {key: number for number, key in enumerate(table.objects)}
            if len(objects) != len(table.objects):
                table, objects = None, {}  # a content object listed twice: renumber all
        t_ints = table.ints if table is not None else array("q")
        # The run of unchanged rows waiting to be copied: rows [row0, row1), parts [part0, part1).
        row0 = row1 = part0 = part1 = 0
        for entry in files.values():
            if entry._table is table and table is not None:
                row = entry._row
                first = table.first_parts[row]
                o = row * _INTS
                if entry._as_loaded and entry.racy == bool(t_ints[o] & _RACY):
                    if row != row1 or first != part1:
                        _copy_rows(table, row0, row1, part0, part1, ints, hashes, parts)
                        row0, part0 = row, first
                    row1, part1 = row + 1, first + t_ints[o + 9]
                    continue
            _copy_rows(table, row0, row1, part0, part1, ints, hashes, parts)
            row0 = row1 = part0 = part1 = 0
            _encode_entry(entry, objects, ints, hashes, parts)
            self.one_by_one += 1
        _copy_rows(table, row0, row1, part0, part1, ints, hashes, parts)
        if table is not None:
            objects = _drop_unused(objects, parts)
        return objects, ints, hashes, parts


def _sections(
    header: dict[str, Any], paths: bytes, ints: array[int], hashes: bytearray, parts: array[int]
) -> tuple[str, list[bytes | memoryview]]:
    """The body's pieces, each section after its length, and the body's digest."""
    pieces: list[bytes | memoryview] = []
    digest = hashlib.sha256()
    for section in (_json_bytes(header), paths, _little(ints), memoryview(hashes), _little(parts)):
        for piece in (struct.pack("<Q", len(section)), section):
            digest.update(piece)
            pieces.append(piece)
    return digest.hexdigest(), pieces


def _delta_pieces(index: Index, base: _Base) -> list[bytes | memoryview] | None:
    """The delta of ``index`` against ``base``: every entry not as the base has it (the
    base's row, its stat, its racy flag) and every path gone since, with the fields that
    are not per file. None when the changes are too many to be worth a delta."""
    t = base.table
    limit = max(_DELTA_AT_LEAST, len(t.paths) // 16)
    ints, base_paths = t.ints, t.paths
    if index._rows is not None and index._rows is not t:
        index.files  # noqa: B018 -- rows of other columns: made into entries to compare
    files = index._entries
    if index._rows is not None:
        # Rows of the base: only the paths made into entries or dropped since can differ.
        return _delta_of_made(index, base, limit)
    seen = bytearray(len(base_paths))
    changed: dict[str, IndexEntry] = {}
    for path, entry in cast("dict[str, IndexEntry]", files).items():
        # As _Encoded._columns tells an entry written already (inline: this runs per
        # file), with an equal stat too and the same path.
        if entry._table is t:
            row = entry._row
            if (
                (entry._as_loaded or entry.stat_key == _row_key(t, row))
                and entry.racy == bool(ints[row * _INTS] & _RACY)
                and base_paths[row] == path
            ):
                seen[row] = 1
                continue
        changed[path] = entry
        if len(changed) > limit:
            return None
    removed = [p for p, kept in zip(base_paths, seen, strict=True) if not kept and p not in files]
    return _delta_encoded(index, base, changed, removed, limit)


def _delta_of_made(index: Index, base: _Base, limit: int) -> list[bytes | memoryview] | None:
    """:func:`_delta_pieces` of an index that has rows of ``base`` still: the paths made
    into entries or dropped since its load are the only ones that may have changed."""
    files, t = index._entries, base.table
    ints, base_paths = t.ints, t.paths
    changed: dict[str, IndexEntry] = {}
    removed: list[str] = []
    for path, row in index._made.items():
        entry = files.get(path)
        if not isinstance(entry, IndexEntry):
            if row >= 0 and entry is None:
                removed.append(path)  # a file of the base, gone since
            continue
        if (
            entry._table is t
            and (entry._as_loaded or entry.stat_key == _row_key(t, entry._row))
            and entry.racy == bool(ints[entry._row * _INTS] & _RACY)
            and base_paths[entry._row] == path
        ):
            continue  # made from its row, and as the row has it still
        changed[path] = entry
    return _delta_encoded(index, base, changed, removed, limit)


def _delta_encoded(
    index: Index, base: _Base, changed: dict[str, IndexEntry], removed: list[str], limit: int
) -> list[bytes | memoryview] | None:
    """The delta's pieces: ``changed`` entries, ``removed`` paths and the fields that are
    not per file (None if the changes are too many)."""
    if len(changed) + len(removed) > limit:
        return None
    header = {
        "of": base.digest,
        "volume_id": index.volume_id,
        "base": index.base,
        "ahead": index.ahead,
        "removed": removed,
        "dirs_added": sorted(index.dirs - base.dirs),
        "dirs_removed": sorted(base.dirs - index.dirs),
        "explicit_dirs_added": sorted(index.explicit_dirs - base.explicit_dirs),
        "explicit_dirs_removed": sorted(base.explicit_dirs - index.explicit_dirs),
    }
    return _Encoded(changed, header, _DELTA_MAGIC, DELTA_FORMAT, None).pieces


def _rows_to_copy(index: Index) -> _Table | None:
    """The columns a save copies unchanged entries from: those of the base saved or
    loaded last, else those most entries were loaded from (a copy of a snapshot's index
    that was never saved), else none."""
    if index._base is not None:
        return index._base.table
    if index._rows is not None:
        return index._rows
    for entry in index.files.values():
        if entry._table is not None:
            return entry._table
    return None


def _copy_rows(
    table: _Table | None,
    row0: int,
    row1: int,
    part0: int,
    part1: int,
    ints: array[int],
    hashes: bytearray,
    parts: array[int],
) -> None:
    if table is None or row0 == row1:
        return
    ints.extend(table.ints[row0 * _INTS : row1 * _INTS])
    hashes += table.hashes[row0 * 32 : row1 * 32]
    parts.extend(table.parts[part0 * 3 : part1 * 3])


def _encode_entry(
    entry: IndexEntry,
    objects: dict[tuple[str, str], int],
    ints: array[int],
    hashes: bytearray,
    parts: array[int],
) -> None:
    flags = _RACY if entry.racy else 0
    sig = entry.stat_key
    if sig is not None:
        flags |= _HAS_SIG
    else:
        sig = (0, 0, 0, 0, 0)
    table = entry._table
    if table is not None:
        # Never parsed (but its signature changed, or it came from other columns).
        row = entry._row
        size, mtime_ns, mode, nparts = _row_columns(table, row)
        ints.extend((flags | _HAS_RECORD, *sig, size, mtime_ns, mode, nparts))
        hashes += table.hashes[row * 32 : row * 32 + 32]
        for kind, obj, offset, length in _row_parts(table, row):
            number = objects.setdefault((kind, obj), len(objects))
            parts.extend((number, offset, length))
        return
    record = entry.record
    if record is None:
        ints.extend((flags, *sig, 0, 0, 0, 0))
        hashes += _ZERO_HASH
        return
    flags |= _HAS_RECORD
    ints.extend((flags, *sig, record.size, record.mtime_ns, record.mode, len(record.parts)))
    hashes += bytes.fromhex(record.hash)
    for part in record.parts:
        number = objects.setdefault((part.kind, part.obj), len(objects))
        parts.extend((number, part.offset, part.length))


def _drop_unused(
    objects: dict[tuple[str, str], int], parts: array[int]
) -> dict[tuple[str, str], int]:
    """The loaded numbering keeps objects no file refers to any more (their files were
    changed or deleted): once they are many, drop them and number the rest again."""
    used = set(parts[0::3])
    if len(objects) - len(used) <= max(64, len(objects) // 8):
        return objects
    order = sorted(used)
    new_number = {old: new for new, old in enumerate(order)}
    by_number = {number: key for key, number in objects.items()}
    parts[0::3] = array("q", [new_number[n] for n in parts[0::3]])
    return {by_number[old]: new for new, old in enumerate(order)}


def _decode(raw: bytes, path: Path) -> Index:
    """The index of a base read from ``path`` (the base of its next save's delta)."""
    if not raw.startswith(_MAGIC + b" "):
        return _decode_v1(raw)
    format_, digest, header, sections = _read_sections(raw, _MAGIC, _READ_FORMATS)
    index = Index(str(header["volume_id"]), int(header["base"]))
    index.dirs = {str(d) for d in header["dirs"]}
    index.explicit_dirs = {str(d) for d in header["explicit_dirs"]}
    index.ahead = int(header.get("ahead", 0))  # absent in indexes of older versions
    rows, table = _rows_of(header, sections)
    index._entries = cast("dict[str, IndexEntry | int]", rows)
    index._rows = table
    # Deltas go only beside a base of this format: a version that reads format 2 would
    # read such a base without its delta.
    if format_ == str(FORMAT).encode():
        index._base = _Base(
            path, digest, table, frozenset(index.dirs), frozenset(index.explicit_dirs)
        )
    return index


def _apply_delta(index: Index, raw: bytes) -> None:
    """Apply the delta ``raw`` to ``index``, just loaded from its base, if it is that
    base's delta (else it is stale: see the module's docstring)."""
    _, _, header, sections = _read_sections(raw, _DELTA_MAGIC, (str(DELTA_FORMAT).encode(),))
    base = index._base
    if base is None or header["of"] != base.digest:
        return
    if str(header["volume_id"]) != index.volume_id:
        raise CorruptData("index delta belongs to another volume")
    removed = header["removed"]
    if not isinstance(removed, list) or not all(type(p) is str for p in removed):
        raise CorruptData("index delta lists malformed paths")
    if removed and _unsafe_paths("\x00".join(removed)):
        raise CorruptData("index delta holds an unsafe path")
    rows, table = _rows_of(header, sections)
    for p in removed:
        index.drop(p)
    for p, row in rows.items():
        index.put(p, _loaded_entry(table, row))
    index.base = int(header["base"])
    index.ahead = int(header["ahead"])
    index.dirs.difference_update(str(d) for d in header["dirs_removed"])
    index.dirs.update(str(d) for d in header["dirs_added"])
    index.explicit_dirs.difference_update(str(d) for d in header["explicit_dirs_removed"])
    index.explicit_dirs.update(str(d) for d in header["explicit_dirs_added"])


def _first_line(magic: bytes, format_: int, digest: str) -> bytes:
    """A base's or a delta's first line: what it is, its format, the digest of the rest."""
    return b"%s %d %s\n" % (magic, format_, digest.encode())


def _read_sections(
    raw: bytes, magic: bytes, formats: tuple[bytes, ...]
) -> tuple[bytes, str, dict[str, Any], list[memoryview]]:
    """The format, the digest, the header and the sections of a base or a delta, checked
    whole."""
    what = "index delta" if magic == _DELTA_MAGIC else "index"
    end = raw.find(b"\n")
    fields = raw[: max(end, 0)].split(b" ")
    if end < 0 or len(fields) != 3 or fields[0] != magic:
        raise CorruptData(f"not a kvol {what}")
    if fields[1] not in formats:
        raise CorruptData(f"unsupported {what} format {fields[1]!r}")
    view = memoryview(raw)[end + 1 :]  # the body, not a copy of its megabytes
    digest = hashlib.sha256(view).hexdigest()
    if digest.encode() != fields[2]:
        raise CorruptData(f"{what} failed its checksum (truncated or modified)")
    sections = []
    at = 0
    for _ in range(5):
        (length,) = struct.unpack_from("<Q", view, at)
        at += 8
        if at + length > len(view):
            raise CorruptData(f"{what} section runs past its end")
        sections.append(view[at : at + length])
        at += length
    header = json.loads(bytes(sections[0]))
    if not isinstance(header, dict):
        raise CorruptData(f"{what} header is not an object")
    return fields[1], digest, header, sections


def _rows_of(header: dict[str, Any], sections: list[memoryview]) -> tuple[dict[str, int], _Table]:
    """The files of a base or a delta: path -> row of its columns, and the columns."""
    count = int(header["count"])
    objects: list[tuple[str, str]] = []
    for name in header["objects"]:
        kind, obj = str(name)[:1], str(name)[1:]
        if kind not in ("b", "p") or not HASH_RE.match(obj):
            raise CorruptData(f"malformed content object {name!r}")
        objects.append((kind, obj))

    text = str(sections[1], "utf-8", "surrogateescape")
    paths = text.split("\x00") if count else []
    ints = _from_little(sections[2])
    raw_hashes = bytes(sections[3])
    table = _Table(objects, ints, raw_hashes, _from_little(sections[4]))
    if len(paths) != count or len(ints) != count * _INTS or len(raw_hashes) != count * 32:
        raise CorruptData("index sections disagree on the number of files")
    if len(table.parts) % 3:
        raise CorruptData("index parts are malformed")
    if count and _unsafe_paths(text):
        raise CorruptData("index holds an unsafe path")

    # Most rows are files committed and matched, not racy: an entry made from one takes
    # a few stores (see _loaded_entry); the others are listed.
    table.paths = paths
    flags = ints[0::_INTS]
    counted = ints[9::_INTS]  # parts per row; none for a row without a record
    odd = (
        [] if flags.count(_TYPICAL) == count else [i for i, f in enumerate(flags) if f != _TYPICAL]
    )
    for i in odd:
        if not flags[i] & _HAS_RECORD:
            counted[i] = 0
    if count and min(counted) < 0:
        raise CorruptData("index parts are malformed")
    firsts = table.first_parts = array("q", accumulate(counted, initial=0))
    if firsts.pop() * 3 != len(table.parts):
        raise CorruptData("index parts are malformed")
    table.odd = odd
    rows = dict(zip(paths, range(count), strict=True))
    if len(rows) != count:
        raise CorruptData("index holds a path twice")
    return rows, table


def _loaded_entry(table: _Table, row: int) -> IndexEntry:
    """The entry of a row as loaded: its record and (for the typical row) its signature
    left in the row."""
    entry = IndexEntry.__new__(IndexEntry)
    entry._record = None
    entry._as_loaded = True
    entry._table = table
    entry._row = row
    flags = table.ints[row * _INTS]
    if flags == _TYPICAL:
        entry._key = _IN_ROW
        entry.racy = False
        return entry
    entry._key = _row_key(table, row)  # None without a signature
    entry.racy = bool(flags & _RACY)
    if not flags & _HAS_RECORD:
        entry._table, entry._row = None, 0
    return entry


def _entry_flags(entry: IndexEntry) -> int:
    """_HAS_RECORD and _HAS_SIG as the entry has them."""
    return (_HAS_RECORD if entry.has_record else 0) | (_HAS_SIG if entry._key is not None else 0)


def _decode_v1(raw: bytes) -> Index:
    """The first format (zlib-compressed JSON), still read so older copies open."""
    payload = json.loads(zlib.decompress(raw))
    index = Index(str(payload["volume_id"]), int(payload["base"]))
    for p, (record, sig, racy) in payload["files"].items():
        index.files[p] = IndexEntry(
            FileRecord.from_list(record, check_size=False) if record is not None else None,
            Signature(*sig) if sig is not None else None,
            bool(racy),
        )
    index.dirs = set(payload["dirs"])
    index.explicit_dirs = set(payload["explicit_dirs"])
    return index


class _Table:
    """The columns of a loaded index, shared by the records not parsed yet."""

    __slots__ = ("first_parts", "hashes", "ints", "objects", "odd", "parts", "paths")

    def __init__(
        self,
        objects: list[tuple[str, str]],
        ints: array[int],
        hashes: bytes | bytearray,
        parts: array[int],
    ) -> None:
        self.objects = objects
        self.ints = ints
        #: Content ids, 32 bytes per row (never changed once the table is made).
        self.hashes = hashes
        #: Each row's first part (an index into ``parts`` / 3).
        self.first_parts = array("q")
        #: Each row's path.
        self.paths: list[str] = []
        #: The rows not typical (_TYPICAL), as loaded: the only ones that may lack a
        #: record or a signature, or be racy.
        self.odd: list[int] = []
        self.parts = parts


def _row_key(table: _Table, row: int) -> SigTuple | None:
    """The signature in the row (None when it has none)."""
    o = row * _INTS
    ints = table.ints
    if not ints[o] & _HAS_SIG:
        return None
    return (ints[o + 1], ints[o + 2], ints[o + 3], ints[o + 4], ints[o + 5])


def _row_columns(table: _Table, row: int) -> tuple[int, int, int, int]:
    """size, mtime_ns, mode, number of parts"""
    o = row * _INTS
    ints = table.ints
    return ints[o + 6], ints[o + 7], ints[o + 8], ints[o + 9]


def _row_parts(table: _Table, row: int) -> list[tuple[str, str, int, int]]:
    first = table.first_parts[row]
    out = []
    for k in range(_row_columns(table, row)[3]):
        at = (first + k) * 3
        number = table.parts[at]
        if not 0 <= number < len(table.objects):
            raise CorruptData("index refers to an unknown content object")
        kind, obj = table.objects[number]
        out.append((kind, obj, table.parts[at + 1], table.parts[at + 2]))
    return out


def _row_record(table: _Table, row: int) -> FileRecord:
    size, mtime_ns, mode, _ = _row_columns(table, row)
    parts: list[Any] = [list(p) for p in _row_parts(table, row)]
    digest = table.hashes[row * 32 : row * 32 + 32].hex()
    # The same checks as a record of the log, which may hold parts that do not add up to
    # the size (older versions published some): reading that file fails, not the index.
    return FileRecord.from_list([size, mtime_ns, mode, digest, parts], check_size=False)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _little(values: array[int]) -> memoryview:
    """The values as little-endian bytes (a view, not a copy, where the machine is so)."""
    if struct.pack("=q", 1) != struct.pack("<q", 1):
        values = array("q", values)
        values.byteswap()
    return memoryview(values).cast("B")


def _from_little(data: memoryview) -> array[int]:
    if len(data) % 8:
        raise CorruptData("index section is not a whole number of integers")
    values = array("q")
    values.frombytes(data)
    if struct.pack("=q", 1) != struct.pack("<q", 1):
        values.byteswap()
    return values
