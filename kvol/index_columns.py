"""An index's bytes: the columns a base or a delta is saved as, and the rows in them.

A loaded index keeps its columns (a :class:`Table`) and reads a file's record or
signature from its row only when something asks for it; a save copies unchanged rows
as they are. This module knows the layout; kvol.index knows what the entries mean.
"""

from __future__ import annotations

import hashlib
import json
import struct
from array import array
from itertools import accumulate
from typing import Any

from kvol.errors import CorruptData
from kvol.model import HASH_RE, FileRecord
from kvol.paths import RESERVED

SigTuple = tuple[int, int, int, int, int]

# -- the format ---------------------------------------------------------------------------
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
READ_FORMATS = (b"2", b"3")
MAGIC = b"kvol-index"
DELTA_MAGIC = b"kvol-index-delta"
DELTA_FORMAT = 1
INTS = 10
HAS_RECORD, HAS_SIG, RACY = 1, 2, 4
TYPICAL = HAS_RECORD | HAS_SIG  # a file committed and matched, not racy
ZERO_HASH = bytes(32)


def unsafe_paths(text: str) -> bool:
    """Could any of the NUL-separated paths not be a checked volume path? (empty, "." or
    ".." components, a leading or trailing "/", the reserved top-level directory)"""
    # Every component stands between two slashes here: one search for each bad one.
    slashed = f"/{text.replace(chr(0), '/')}/"
    if "//" in slashed or "/./" in slashed or "/../" in slashed:
        return True
    framed = f"\x00{text}\x00"
    return f"\x00{RESERVED}/" in framed or f"\x00{RESERVED}\x00" in framed


def encode_sections(
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


def copy_rows(
    table: Table | None,
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
    ints.extend(table.ints[row0 * INTS : row1 * INTS])
    hashes += table.hashes[row0 * 32 : row1 * 32]
    parts.extend(table.parts[part0 * 3 : part1 * 3])


def drop_unused(
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


def first_line(magic: bytes, format_: int, digest: str) -> bytes:
    """A base's or a delta's first line: what it is, its format, the digest of the rest."""
    return b"%s %d %s\n" % (magic, format_, digest.encode())


def read_sections(
    raw: bytes, magic: bytes, formats: tuple[bytes, ...]
) -> tuple[bytes, str, dict[str, Any], list[memoryview]]:
    """The format, the digest, the header and the sections of a base or a delta, checked
    whole."""
    what = "index delta" if magic == DELTA_MAGIC else "index"
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


def rows_of(header: dict[str, Any], sections: list[memoryview]) -> tuple[dict[str, int], Table]:
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
    table = Table(objects, ints, raw_hashes, _from_little(sections[4]))
    if len(paths) != count or len(ints) != count * INTS or len(raw_hashes) != count * 32:
        raise CorruptData("index sections disagree on the number of files")
    if len(table.parts) % 3:
        raise CorruptData("index parts are malformed")
    if count and unsafe_paths(text):
        raise CorruptData("index holds an unsafe path")

    # Most rows are files committed and matched, not racy: an entry made from one takes
    # a few stores (see _loaded_entry); the others are listed.
    table.paths = paths
    flags = ints[0::INTS]
    counted = ints[9::INTS]  # parts per row; none for a row without a record
    odd = [] if flags.count(TYPICAL) == count else [i for i, f in enumerate(flags) if f != TYPICAL]
    for i in odd:
        if not flags[i] & HAS_RECORD:
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


class Table:
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
        #: The rows not typical (TYPICAL), as loaded: the only ones that may lack a
        #: record or a signature, or be racy.
        self.odd: list[int] = []
        self.parts = parts


def row_key(table: Table, row: int) -> SigTuple | None:
    """The signature in the row (None when it has none)."""
    o = row * INTS
    ints = table.ints
    if not ints[o] & HAS_SIG:
        return None
    return (ints[o + 1], ints[o + 2], ints[o + 3], ints[o + 4], ints[o + 5])


def row_columns(table: Table, row: int) -> tuple[int, int, int, int]:
    """size, mtime_ns, mode, number of parts"""
    o = row * INTS
    ints = table.ints
    return ints[o + 6], ints[o + 7], ints[o + 8], ints[o + 9]


def row_parts(table: Table, row: int) -> list[tuple[str, str, int, int]]:
    first = table.first_parts[row]
    out = []
    for k in range(row_columns(table, row)[3]):
        at = (first + k) * 3
        number = table.parts[at]
        if not 0 <= number < len(table.objects):
            raise CorruptData("index refers to an unknown content object")
        kind, obj = table.objects[number]
        out.append((kind, obj, table.parts[at + 1], table.parts[at + 2]))
    return out


def row_record(table: Table, row: int) -> FileRecord:
    size, mtime_ns, mode, _ = row_columns(table, row)
    parts: list[Any] = [list(p) for p in row_parts(table, row)]
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
