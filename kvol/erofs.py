"""EROFS metadata images of a volume's tree whose file data lives in a separate blob.

A cold node can show a volume's whole tree by mounting one small read-only image that
holds only names, sizes, modes and times: every file's data is a chunk of an extra
device, a sparse blob file laid out by :class:`BlobLayout`, whose ranges can be filled
when first read (the kernel's reads of the blob raise fanotify pre-content events with
the range; see docs/kubernetes.md). Writing the image costs a few microseconds a file,
with no inode made on the node's filesystem per file.

Only what the Linux EROFS driver needs for that is written (see the kernel's
Documentation/filesystems/erofs.rst): a superblock with a one-slot device table,
64-byte inodes, directories in plain blocks, and regular files as one chunk each on
device 1 (or none, when empty). Mounted from a file (kernel 6.12+, "file-backed
mounts") with ``-o device=<blob>``.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from kvol.errors import CorruptData, InvalidArgument, KvolError
from kvol.mounting import MS_NODEV, MS_NOSUID, MS_RDONLY, mount, umount

BLOCK_BITS = 12
BLOCK = 1 << BLOCK_BITS
_SUPER_OFFSET = 1024
_MAGIC = 0xE0F5E1E2
_INCOMPAT_CHUNKED_FILE = 0x4
_INCOMPAT_DEVICE_TABLE = 0x8
_DEVICE_SLOT = 128
_DEVICE_TABLE_OFFSET = _SUPER_OFFSET + 128
#: Metadata (inodes, then directory blocks) starts at this block; inode numbers (nids)
#: count 32-byte slots from its start.
_META_BLOCK = 1
_SLOT = 32
_INODE = 64  # the extended inode: 64-bit sizes, nanosecond times, 32-bit ids
_CHUNK_INDEX = 8
_LAYOUT_FLAT_PLAIN = 0
_LAYOUT_CHUNK_BASED = 4
_CHUNK_FORMAT_INDEXES = 0x20  # 8-byte indexes, which carry the device id
_CHUNK_BITS_MAX = 31  # chunk sizes of up to 4 KiB << 31 (8 TiB)
_DIRENT = struct.Struct("<QHBB")
_FT_REG, _FT_DIR = 1, 2
_S_IFREG, _S_IFDIR = 0o100000, 0o040000
#: Largest blob the chunk indexes can address (32-bit block numbers).
MAX_BLOB_BYTES = (1 << 32) * BLOCK
_INODE_STRUCT = struct.Struct("<HHHHQIIIIQII16x")
_SUPER = struct.Struct("<IIIBBHQQIIII16s16sIHHHBBIQ24x")
_UUID_FIELD = 12


class ImageFile(NamedTuple):
    """A regular file of the image: its metadata and where its data starts in the blob.
    (A tuple: a volume's image is written from one per file, at every cold start.)"""

    size: int
    mode: int
    mtime_ns: int
    blob_offset: int  # a multiple of BLOCK; unused when size is 0


@dataclass
class BlobLayout:
    """Places contents in the blob, one block-aligned extent each; equal keys share one."""

    size: int = 0
    offsets: dict[str, int] = field(default_factory=dict)

    def place(self, key: str, size: int) -> int:
        """The blob offset of ``key``'s content of ``size`` bytes (placed on first call)."""
        found = self.offsets.get(key)
        if found is None:
            found = self.offsets[key] = self.size
            self.size += -(-size // BLOCK) * BLOCK
            if self.size > MAX_BLOB_BYTES:
                raise InvalidArgument("the volume is too large for one blob (16 TiB)")
        return found


@dataclass
class _Dir:
    nid: int = 0
    entries: dict[str, _Dir | ImageFile] = field(default_factory=dict)
    subdirs: int = 0
    block: int = 0
    blocks: list[bytes] = field(default_factory=list)


def _tree(files: Mapping[str, ImageFile], dirs: Iterable[str]) -> _Dir:
    root = _Dir()

    def directory(rel: str) -> _Dir:
        node = root
        for name in rel.split("/"):
            child = node.entries.get(name)
            if child is None:
                child = node.entries[name] = _Dir()
                node.subdirs += 1
            elif not isinstance(child, _Dir):
                raise InvalidArgument(f"{rel!r} is both a file and a directory")
            node = child
        return node

    for rel in dirs:
        if rel:
            directory(rel)
    found: dict[str, _Dir] = {"": root}  # directories looked up already, by path
    for rel, file in files.items():
        parent, _, name = rel.rpartition("/")
        if not name or name in (".", ".."):
            raise InvalidArgument(f"not a file path: {rel!r}")
        node = found.get(parent)
        if node is None:
            node = found[parent] = directory(parent)
        if name in node.entries:
            raise InvalidArgument(f"{rel!r} is both a file and a directory")
        node.entries[name] = file
    return root


def _encode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _dir_blocks(node: _Dir, parent: _Dir, nids: dict[tuple[int, str], int]) -> list[bytes]:
    """The directory's entries, "." and ".." among them, in byte order, in blocks."""
    items = [(b".", node.nid, _FT_DIR), (b"..", parent.nid, _FT_DIR)]
    for name, child in node.entries.items():
        if isinstance(child, _Dir):
            items.append((_encode(name), child.nid, _FT_DIR))
        else:
            items.append((_encode(name), nids[id(node), name], _FT_REG))
    items.sort()
    blocks: list[bytes] = []
    start, used = 0, 0
    for i, (raw, _, _) in enumerate(items):
        if len(raw) > 255:
            raise InvalidArgument(f"name longer than 255 bytes: {raw!r}")
        if used + _DIRENT.size + len(raw) > BLOCK:
            blocks.append(_dir_block(items[start:i]))
            start, used = i, 0
        used += _DIRENT.size + len(raw)
    blocks.append(_dir_block(items[start:]))
    return blocks


def _dir_block(items: list[tuple[bytes, int, int]]) -> bytes:
    heads = bytearray()
    names = bytearray()
    nameoff = len(items) * _DIRENT.size
    for name, nid, kind in items:
        heads += _DIRENT.pack(nid, nameoff + len(names), kind, 0)
        names += name
    return bytes(heads + names)


def write_image(
    path: str | os.PathLike[str],
    files: Mapping[str, ImageFile],
    dirs: Iterable[str] = (),
    *,
    blob_bytes: int,
    mtime_ns: int = 0,
    uuid: bytes = b"",
) -> None:
    """Write the image of ``files`` (by relative path) and ``dirs`` (each directory a
    file implies is made too) whose data is in a blob of ``blob_bytes``; directories
    get ``mtime_ns`` and mode 0755, everything belongs to root. ``uuid`` (up to 16
    bytes) is the superblock's, read back by :func:`image_uuid`."""
    if blob_bytes % BLOCK or not 0 <= blob_bytes <= MAX_BLOB_BYTES:
        raise InvalidArgument("the blob's size must be a whole number of blocks")
    if len(uuid) > 16:
        raise InvalidArgument("an image's uuid is at most 16 bytes")
    root = _tree(files, dirs)
    # Inodes first (the root's nid must fit 16 bits: it goes first), each file's chunk
    # index right after its inode; then every directory's blocks.
    order: list[tuple[_Dir, _Dir]] = []
    nids: dict[tuple[int, str], int] = {}  # a file's, by (its directory, its name)
    slot = 0
    pending = [(root, root)]
    regular: list[tuple[int, ImageFile]] = []
    while pending:
        node, parent = pending.pop()
        node.nid = slot
        slot += _INODE // _SLOT
        order.append((node, parent))
        for name, child in node.entries.items():
            if isinstance(child, _Dir):
                pending.append((child, node))
            else:
                nids[id(node), name] = slot
                regular.append((slot, child))
                slot += -(-(_INODE + (_CHUNK_INDEX if child.size else 0)) // _SLOT)
    meta_start = _META_BLOCK * BLOCK
    block = -(-(meta_start + slot * _SLOT) // BLOCK)
    for node, parent in order:
        node.blocks = _dir_blocks(node, parent, nids)
        node.block = block
        block += len(node.blocks)
    image = bytearray(block * BLOCK)

    ino = 1
    for node, _ in order:
        size = (len(node.blocks) - 1) * BLOCK + len(node.blocks[-1])
        _INODE_STRUCT.pack_into(
            image,
            meta_start + node.nid * _SLOT,
            1 | _LAYOUT_FLAT_PLAIN << 1,
            0,
            _S_IFDIR | 0o755,
            0,
            size,
            node.block,
            ino,
            0,
            0,
            mtime_ns // 1_000_000_000,
            mtime_ns % 1_000_000_000,
            2 + node.subdirs,
        )
        ino += 1
        at = node.block * BLOCK
        for data in node.blocks:
            image[at : at + len(data)] = data
            at += BLOCK
    for nid, file in regular:
        offset = meta_start + nid * _SLOT
        if file.size:
            if file.blob_offset % BLOCK or file.blob_offset + file.size > blob_bytes:
                raise InvalidArgument("a file's data lies outside the blob")
            blocks = -(-file.size // BLOCK)
            chunk_bits = max(0, (blocks - 1).bit_length())
            if chunk_bits > _CHUNK_BITS_MAX:
                raise InvalidArgument("a file is too large for one chunk")
            layout, info = _LAYOUT_CHUNK_BASED, _CHUNK_FORMAT_INDEXES | chunk_bits
            # One chunk: the whole file, on device 1 (the blob), from this block.
            struct.pack_into("<HHI", image, offset + _INODE, 0, 1, file.blob_offset // BLOCK)
        else:
            layout, info = _LAYOUT_FLAT_PLAIN, 0
        _INODE_STRUCT.pack_into(
            image,
            offset,
            1 | layout << 1,
            0,
            _S_IFREG | (file.mode & 0o7777),
            0,
            file.size,
            info,
            ino,
            0,
            0,
            file.mtime_ns // 1_000_000_000,
            file.mtime_ns % 1_000_000_000,
            1,
        )
        ino += 1

    _SUPER.pack_into(
        image,
        _SUPER_OFFSET,
        _MAGIC,
        0,  # no checksum (its compat flag is off)
        0,
        BLOCK_BITS,
        0,
        root.nid,
        ino - 1,
        mtime_ns // 1_000_000_000,
        mtime_ns % 1_000_000_000,
        block,
        _META_BLOCK,
        0,
        uuid,
        b"kvol",
        _INCOMPAT_CHUNKED_FILE | _INCOMPAT_DEVICE_TABLE,
        0,
        1,  # one extra device: the blob
        _DEVICE_TABLE_OFFSET // _DEVICE_SLOT,
        0,
        0,
        0,
        0,
    )
    struct.pack_into("<64sII", image, _DEVICE_TABLE_OFFSET, b"blob", blob_bytes // BLOCK, 0)
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as out:
        out.write(image)
        os.fsync(out.fileno())
    os.replace(tmp, path)


def image_uuid(path: str | os.PathLike[str]) -> bytes:
    """The uuid :func:`write_image` wrote in the image at ``path``."""
    with open(path, "rb") as image:
        head = image.read(_SUPER_OFFSET + _SUPER.size)
    if len(head) < _SUPER_OFFSET + _SUPER.size:
        raise CorruptData(f"{os.fspath(path)} is not an EROFS image: too short")
    fields = _SUPER.unpack_from(head, _SUPER_OFFSET)
    if fields[0] != _MAGIC:
        raise CorruptData(f"{os.fspath(path)} is not an EROFS image")
    return bytes(fields[_UUID_FIELD])


def mount_image(
    image: str | os.PathLike[str], blob: str | os.PathLike[str], target: str | os.PathLike[str]
) -> None:
    """Mount ``image`` read-only at ``target``, its files' data read from ``blob`` (mark
    the blob for pre-content events first: the mount opens it once, and only an open
    made while a mark exists ever raises them)."""
    blob_path = os.fspath(blob)
    if "," in blob_path:
        raise InvalidArgument(f"blob path {blob_path} may not contain ','")
    mount(
        os.fspath(image),
        os.fspath(target),
        "erofs",
        MS_RDONLY | MS_NOSUID | MS_NODEV,
        f"device={blob_path}",
    )


def images_supported(scratch: Path) -> bool:
    """Whether this kernel mounts an image from a file with its blob (EROFS, file-backed:
    Linux 6.12+) here; tried for real in a directory made under ``scratch``."""
    where = Path(tempfile.mkdtemp(prefix=".erofs-probe-", dir=scratch))
    try:
        layout = BlobLayout()
        offset = layout.place("probe", 1)
        write_image(where / "image", {"f": ImageFile(1, 0o644, 0, offset)}, blob_bytes=layout.size)
        with open(where / "blob", "wb") as blob:
            blob.truncate(layout.size)
        (where / "mnt").mkdir()
        try:
            mount_image(where / "image", where / "blob", where / "mnt")
        except (KvolError, OSError):
            return False
        umount(where / "mnt")
        return True
    finally:
        shutil.rmtree(where, ignore_errors=True)
