"""The index of a working copy: what the volume had at the copy's base, and the stat of
each local file when it was known to match, so unchanged files are never read again.

The index is read at every open and written after every commit, so its encoding is
columnar and binary (kvol.index_columns): loading 100,000 entries builds no entry at all
(a file is its row until something asks for it), and a file's record is parsed only when
something asks for that.

A save of a few changes is not a rewrite: beside the index (its *base*) a *delta* holds
every entry changed since the base was written, and names that base by its digest. Each
save replaces the delta (temp file, fsync, rename), so one rename makes it count, as
for the base; once the changes are many, the base is written whole and the delta goes.
A delta whose base is not the one beside it (a crash between the two) is ignored: the
base written after it holds everything it said.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import zlib
from array import array
from collections.abc import Collection, Iterator, KeysView, Mapping, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from kvol import gcpause, paths
from kvol.errors import CorruptData
from kvol.fsops import write_atomically
from kvol.index_columns import (
    DELTA_FORMAT,
    DELTA_MAGIC,
    FORMAT,
    HAS_RECORD,
    HAS_SIG,
    INTS,
    MAGIC,
    RACY,
    READ_FORMATS,
    TYPICAL,
    ZERO_HASH,
    Table,
    copy_rows,
    drop_unused,
    encode_sections,
    first_line,
    read_sections,
    row_columns,
    row_key,
    row_parts,
    row_record,
    rows_of,
    unsafe_paths,
)
from kvol.index_columns import (
    SigTuple as SigTuple,
)
from kvol.model import FileRecord, Part, State

#: Files modified this close to a scan are hashed again next time: a write within the
#: filesystem's timestamp granularity could otherwise go unseen ("racy" files).
RACY_NS = 2_000_000_000


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
        self._table: Table | None = None
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
            key = self._key = row_key(table, self._row)
        return key

    @stat_key.setter
    def stat_key(self, value: SigTuple | None) -> None:
        self._key, self._as_loaded = value, False

    @property
    def record(self) -> FileRecord | None:
        if self._record is None and self._table is not None:
            # Parsed once (until the next save of a base leaves it in the row again);
            # the row stays, so saving copies it rather than encoding the record again.
            self._record = row_record(self._table, self._row)
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
    def matched_volume(self) -> bool:
        """Whether the copy had the volume's file here: the local file once matched a
        record (at base or as this copy published it). A file the copy made and never
        published has no record, so its deletion claims nothing of the volume's."""
        return self.has_sig and self.has_record

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
        for path in index._paths_where(HAS_RECORD, 0):
            del self._items[path]

    def __getitem__(self, path: str) -> FileRecord:
        value = self._items[path]
        if type(value) is int:
            assert self._rows is not None  # a row is only ever one of these columns
            record = self._items[path] = row_record(self._rows, value)
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
        self._rows: Table | None = None
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

    def entry_of(self, path: str) -> IndexEntry:
        """The entry of a file the index has (KeyError if it has none)."""
        entry = self.entry(path)
        if entry is None:
            raise KeyError(path)
        return entry

    def holds(self, path: str) -> bool:
        return path in self._entries

    def paths(self) -> KeysView[str]:
        """Every file's path (no entry is made)."""
        return self._entries.keys()

    def without_record(self) -> list[str]:
        """Files with no record: made here and never committed (the volume lacks them)."""
        return self._paths_where(HAS_RECORD, 0)

    def implied_dirs(
        self, *, except_files: Collection[str] = (), except_dirs: Collection[str] = ()
    ) -> set[str]:
        """Directories the volume has, as recorded here, by what is under them: those
        above its explicit directories and above its files with a record (but for
        ``except_dirs`` and ``except_files``). No entry is made."""
        left_out = set(except_files).union(self.without_record())
        implied = {
            a for d in self.explicit_dirs if d not in except_dirs for a in paths.ancestors(d)
        }
        implied.update(a for p in self.paths() if p not in left_out for a in paths.ancestors(p))
        return implied

    def recorded_bytes(self) -> int:
        """The size of every file as the volume has it (0 for one without a record),
        summed without making an entry of a row."""
        entries, rows = self._entries, self._rows
        if rows is None:
            return sum(record_size(e) for e in cast("dict[str, IndexEntry]", entries).values())
        ints = rows.ints
        # A row without a record has size 0 (see _encode_entry).
        total = sum(ints[6::INTS])
        for path, row in self._made.items():
            if row >= 0:
                total -= ints[row * INTS + 6]
            value = entries.get(path)
            if isinstance(value, IndexEntry):
                total += record_size(value)
        return total

    def stat_rows(self) -> tuple[Mapping[str, IndexEntry | int], array[int]]:
        """For a scan that compares every file's stat: path -> its entry, or its row,
        whose signature the returned column holds at ``row * INTS + 1`` to ``+ 5``. Every
        row left is typical (committed, matched, not racy): the few others are made into
        entries here. The mapping is the index's own, to read while nothing changes it."""
        rows = self._rows
        if rows is None:
            return self._entries, array("q")
        entries, names = self._entries, rows.paths
        for row in rows.odd:
            if type(entries.get(names[row])) is int:
                self.entry(names[row])
        return entries, rows.ints

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
        return self._paths_where(HAS_RECORD | HAS_SIG, HAS_RECORD)

    def kept_out_dirs(self) -> set[str]:
        """Directories the volume has explicitly that this copy does not have: a local
        file stood where they go."""
        return self.explicit_dirs - self.dirs

    def _paths_where(self, mask: int, flags: int) -> list[str]:
        """Paths whose entry has ``flags`` among the ``mask`` of HAS_RECORD, HAS_SIG,
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
        if rows is not None and TYPICAL & mask != flags:
            ints, names = rows.ints, rows.paths
            for row in rows.odd:
                if ints[row * INTS] & mask == flags and type(entries.get(names[row])) is int:
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
            if raw.startswith(first_line(MAGIC, FORMAT, base.digest)):
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
        encoded = _Encoded(self.files, header, MAGIC, FORMAT, _rows_to_copy(self), bind=True)
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

    Looked up for each new small file. The first few lookups search the loaded column of
    content ids (a commit of a few files in a large copy makes no table); past them, a
    table is built from the index's hashes, without parsing any record, and kept with the
    index, so a commit of a few files does not go through every file again: files this
    copy publishes are added as they land; a file changed any other way is missed, never
    trusted (a hit counts only if the file at the path the table names still holds that
    very content). It maps the first 8 bytes of a content id to a path, about 80 bytes a
    file."""

    def __init__(self, index: Index) -> None:
        self._index = index
        self._by_hash: dict[int, str] | None = None
        self._searches = 0

    def get(self, content_id: str) -> tuple[Part, ...] | None:
        try:
            key = bytes.fromhex(content_id)
        except ValueError:
            return None  # not a content id
        if len(key) != 32:
            return None
        index = self._index
        rows = index._rows
        if (
            self._by_hash is None
            and rows is not None
            and self._searches < _SEARCHES_BEFORE_TABLE
            and len(index._made) <= _SEARCHES_MADE_AT_MOST
        ):
            self._searches += 1
            found = self._search(rows, key)
        else:
            if self._by_hash is None:
                self._by_hash = self._table()
            named = self._by_hash.get(int.from_bytes(key[:8], "little"))
            found = None if named is None else index.entry(named)
        if found is None or _held_hash(found) != key:
            return None
        record = found.record
        return None if record is None else record.parts

    def _search(self, rows: Table, key: bytes) -> IndexEntry | None:
        """An entry holding ``key``: a row of the loaded column still as loaded, or an
        entry made or changed since the load."""
        index = self._index
        entries = index._entries
        for path in index._made:
            value = entries.get(path)
            if isinstance(value, IndexEntry) and _held_hash(value) == key:
                return value
        hashes = rows.hashes
        at = hashes.find(key)
        while at >= 0:
            if at % 32 == 0 and type(entries.get(rows.paths[at // 32])) is int:
                return index.entry(rows.paths[at // 32])
            at = hashes.find(key, at + 1)
        return None

    def _table(self) -> dict[int, str]:
        """First 8 bytes of each content id -> a path holding it: from the loaded column
        for the rows still as loaded (no entry made of them), from the entries for the
        others."""
        index = self._index
        by_hash: dict[int, str] = {}
        rows = index._rows
        if rows is None:
            entries = cast("dict[str, IndexEntry]", index._entries)
        else:
            hashes, flags, current = rows.hashes, rows.ints[0::INTS], index._entries
            for row, path in enumerate(rows.paths):
                if flags[row] & HAS_RECORD and type(current.get(path)) is int:
                    by_hash[int.from_bytes(hashes[row * 32 : row * 32 + 8], "little")] = path
            made = ((p, current.get(p)) for p in index._made)
            entries = {p: e for p, e in made if isinstance(e, IndexEntry)}
        for path, entry in entries.items():
            held = _held_hash(entry)
            if held is not None:
                by_hash[int.from_bytes(held[:8], "little")] = path
        return by_hash

    def forget(self) -> None:
        """Drop the table (made again on the next lookup)."""
        self._by_hash = None

    def note(self, path: str, entry: IndexEntry) -> None:
        """``entry`` is now the file at ``path`` (a file this copy published)."""
        if self._by_hash is not None:
            held = _held_hash(entry)
            if held is not None:
                self._by_hash[int.from_bytes(held[:8], "little")] = path


#: Lookups of known content that search the loaded column before a table is built
#: (each reads the whole column: a few MiB at 100,000 files, about a millisecond).
_SEARCHES_BEFORE_TABLE = 16
#: ... while the entries made since the load, searched one by one, are at most this many.
_SEARCHES_MADE_AT_MOST = 1024


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
        return table.ints[entry._row * INTS + 6]
    record = entry._record
    return 0 if record is None else record.size


DELTA_SUFFIX = ".delta"
#: A save writes a delta while the entries changed or removed since the base are at most
#: this many, or a sixteenth of the base's.
_DELTA_AT_LEAST = 1024


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
    return b"".join(_Encoded(index.files, header, MAGIC, FORMAT, _rows_to_copy(index)).pieces)


@dataclass(frozen=True)
class _Base:
    """The base last saved or loaded: where, its digest, and its columns and directories
    (a delta holds what differs from them)."""

    path: Path
    digest: str
    table: Table
    dirs: frozenset[str]
    explicit_dirs: frozenset[str]


class _Encoded:
    """Entries encoded: their columns, and the pieces written.

    Entries unchanged since their columns were loaded from ``table`` (same signature
    object, same racy flag, record not replaced) are copied from those columns a run of
    rows at a time, with the loaded numbering of content objects; only the others are
    encoded one by one (counted in ``one_by_one``).

    ``bind``: the entries' rows become the new columns (``table``) as they are written,
    each record and signature left in its row (parsed again if asked for: after a commit
    of 100,000 files, most never are)."""

    def __init__(
        self,
        files: dict[str, IndexEntry],
        header: dict[str, Any],
        magic: bytes,
        format_: int,
        table: Table | None,
        *,
        bind: bool = False,
    ) -> None:
        self.one_by_one = 0
        self.table: Table | None = None
        # The paths first: their text, a few MiB at 100,000 files, is gone before the
        # columns are built.
        paths = "\x00".join(files).encode("utf-8", "surrogateescape")
        self.objects, self.ints, self.hashes, self.parts = self._columns(files, table, bind)
        header = {
            **header,
            "count": len(files),
            "objects": [kind + obj for kind, obj in self.objects],
        }
        self.digest, sections = encode_sections(header, paths, self.ints, self.hashes, self.parts)
        self.pieces = [first_line(magic, format_, self.digest), *sections]

    def rebind(self, index: Index, path: Path) -> _Base:
        """The base just written to ``path``, the entries' rows already (made with
        ``bind``)."""
        assert self.table is not None, "encoded without bind"
        self.pieces = []  # written: the paths' bytes are not needed any more
        return _Base(
            path, self.digest, self.table, frozenset(index.dirs), frozenset(index.explicit_dirs)
        )

    def _columns(
        self, files: dict[str, IndexEntry], table: Table | None, bind: bool
    ) -> tuple[dict[tuple[str, str], int], array[int], bytearray, array[int]]:
        objects: dict[tuple[str, str], int] = {}
        ints = array("q")
        parts = array("q")
        hashes = bytearray()
        # The columns being written: an entry encoded one by one is bound to its row at
        # once, so its record and signature go while the columns grow (else both are
        # held at the peak of a commit of 100,000 files). Nothing reads a row before its
        # entry is written; the parts' numbering is the table's once all are in.
        bound = Table([], ints, hashes, parts) if bind else None
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
                o = row * INTS
                if entry._as_loaded and entry.racy == bool(t_ints[o] & RACY):
                    if row != row1 or first != part1:
                        copy_rows(table, row0, row1, part0, part1, ints, hashes, parts)
                        row0, part0 = row, first
                    row1, part1 = row + 1, first + t_ints[o + 9]
                    continue
            copy_rows(table, row0, row1, part0, part1, ints, hashes, parts)
            row0 = row1 = part0 = part1 = 0
            _encode_entry(entry, objects, ints, hashes, parts)
            if bound is not None and entry.has_record:
                _leave_in_row(entry, bound, len(ints) // INTS - 1)
            self.one_by_one += 1
        copy_rows(table, row0, row1, part0, part1, ints, hashes, parts)
        if table is not None:
            objects = drop_unused(objects, parts)
        if bound is not None:
            self.table = _bound_to(files, bound, objects)
        return objects, ints, hashes, parts


def _bound_to(
    files: dict[str, IndexEntry], table: Table, objects: dict[tuple[str, str], int]
) -> Table:
    """``table``, written from ``files`` in their order, made complete (its objects, its
    rows' paths and first parts), every entry with a record bound to its row, which holds
    its record and signature (copied from its old row, or written from the entry)."""
    # The numbering is final now (unused objects dropped), in the dict's order.
    table.objects = list(objects)
    table.paths = list(files)
    ints, firsts = table.ints, table.first_parts
    first = 0
    for row, entry in enumerate(files.values()):
        firsts.append(first)
        if entry.has_record:
            _leave_in_row(entry, table, row)
            first += ints[row * INTS + 9]
    return table


def _leave_in_row(entry: IndexEntry, table: Table, row: int) -> None:
    """``entry`` is ``row`` of ``table`` from now on, which holds its record and its
    signature: neither is kept in the entry (read from the row if asked for)."""
    entry._table, entry._row, entry._as_loaded = table, row, True
    entry._record = None
    if entry._key is not None:
        entry._key = _IN_ROW


def _delta_pieces(index: Index, base: _Base) -> list[bytes | memoryview] | None:
    """The delta of ``index`` against ``base``: every entry not as the base has it (the
    base's row, its stat, its racy flag) and every path gone since, with the fields that
    are not per file. None when the changes are too many to be worth a delta."""
    t = base.table
    limit = max(_DELTA_AT_LEAST, len(t.paths) // 16)
    if index._rows is not None and index._rows is not t:
        index.files  # noqa: B018 -- rows of other columns: made into entries to compare
    if index._rows is not None:
        # Rows of the base: only the paths made into entries or dropped since can differ.
        return _delta_of_made(index, base, limit)
    files = index._entries
    ints, base_paths = t.ints, t.paths
    seen = bytearray(len(base_paths))
    changed: dict[str, IndexEntry] = {}
    for path, entry in cast("dict[str, IndexEntry]", files).items():
        # _as_in_base_row, inline: this runs per file.
        if entry._table is t:
            row = entry._row
            if (
                (entry._as_loaded or entry.stat_key == row_key(t, row))
                and entry.racy == bool(ints[row * INTS] & RACY)
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
    changed: dict[str, IndexEntry] = {}
    removed: list[str] = []
    for path, row in index._made.items():
        entry = files.get(path)
        if not isinstance(entry, IndexEntry):
            if row >= 0 and entry is None:
                removed.append(path)  # a file of the base, gone since
            continue
        if not _as_in_base_row(entry, t, path):
            changed[path] = entry
    return _delta_encoded(index, base, changed, removed, limit)


def _as_in_base_row(entry: IndexEntry, t: Table, path: str) -> bool:
    """Is ``entry`` the row of ``path`` in the base's columns ``t``, as the row has it
    (its record not replaced, an equal stat, the same racy flag)? As _Encoded._columns
    tells an entry written already, with an equal stat too and the same path."""
    return (
        entry._table is t
        and (entry._as_loaded or entry.stat_key == row_key(t, entry._row))
        and entry.racy == bool(t.ints[entry._row * INTS] & RACY)
        and t.paths[entry._row] == path
    )


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
    return _Encoded(changed, header, DELTA_MAGIC, DELTA_FORMAT, None).pieces


def _rows_to_copy(index: Index) -> Table | None:
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


def _encode_entry(
    entry: IndexEntry,
    objects: dict[tuple[str, str], int],
    ints: array[int],
    hashes: bytearray,
    parts: array[int],
) -> None:
    flags = RACY if entry.racy else 0
    sig = entry.stat_key
    if sig is not None:
        flags |= HAS_SIG
    else:
        sig = (0, 0, 0, 0, 0)
    table = entry._table
    if table is not None:
        # Never parsed (but its signature changed, or it came from other columns).
        row = entry._row
        size, mtime_ns, mode, nparts = row_columns(table, row)
        ints.extend((flags | HAS_RECORD, *sig, size, mtime_ns, mode, nparts))
        hashes += table.hashes[row * 32 : row * 32 + 32]
        for kind, obj, offset, length in row_parts(table, row):
            number = objects.setdefault((kind, obj), len(objects))
            parts.extend((number, offset, length))
        return
    record = entry.record
    if record is None:
        ints.extend((flags, *sig, 0, 0, 0, 0))
        hashes += ZERO_HASH
        return
    flags |= HAS_RECORD
    ints.extend((flags, *sig, record.size, record.mtime_ns, record.mode, len(record.parts)))
    hashes += bytes.fromhex(record.hash)
    for part in record.parts:
        number = objects.setdefault((part.kind, part.obj), len(objects))
        parts.extend((number, part.offset, part.length))


def _decode(raw: bytes, path: Path) -> Index:
    """The index of a base read from ``path`` (the base of its next save's delta)."""
    if not raw.startswith(MAGIC + b" "):
        return _decode_v1(raw)
    format_, digest, header, sections = read_sections(raw, MAGIC, READ_FORMATS)
    index = Index(str(header["volume_id"]), int(header["base"]))
    index.dirs = {str(d) for d in header["dirs"]}
    index.explicit_dirs = {str(d) for d in header["explicit_dirs"]}
    index.ahead = int(header.get("ahead", 0))  # absent in indexes of older versions
    rows, table = rows_of(header, sections)
    index._entries = cast("dict[str, IndexEntry | int]", rows)
    # Without rows there is nothing to be lazy about: changes need not be noted.
    index._rows = table if rows else None
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
    _, _, header, sections = read_sections(raw, DELTA_MAGIC, (str(DELTA_FORMAT).encode(),))
    base = index._base
    if base is None or header["of"] != base.digest:
        return
    if str(header["volume_id"]) != index.volume_id:
        raise CorruptData("index delta belongs to another volume")
    removed = header["removed"]
    if not isinstance(removed, list) or not all(type(p) is str for p in removed):
        raise CorruptData("index delta lists malformed paths")
    if removed and unsafe_paths("\x00".join(removed)):
        raise CorruptData("index delta holds an unsafe path")
    rows, table = rows_of(header, sections)
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


def _loaded_entry(table: Table, row: int) -> IndexEntry:
    """The entry of a row as loaded: its record and (for the typical row) its signature
    left in the row."""
    entry = IndexEntry.__new__(IndexEntry)
    entry._record = None
    entry._as_loaded = True
    entry._table = table
    entry._row = row
    flags = table.ints[row * INTS]
    if flags == TYPICAL:
        entry._key = _IN_ROW
        entry.racy = False
        return entry
    entry._key = row_key(table, row)  # None without a signature
    entry.racy = bool(flags & RACY)
    if not flags & HAS_RECORD:
        entry._table, entry._row = None, 0
    return entry


def _entry_flags(entry: IndexEntry) -> int:
    """HAS_RECORD and HAS_SIG as the entry has them."""
    return (HAS_RECORD if entry.has_record else 0) | (HAS_SIG if entry._key is not None else 0)


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
