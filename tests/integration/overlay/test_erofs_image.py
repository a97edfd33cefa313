"""EROFS images of a tree whose data lives in a blob, mounted for real (root only): the
kernel reads back every name, size, mode, time and byte, and reading a file reads only
its range of the blob, which is what lets a node fill the blob as it is read."""

from __future__ import annotations

import ctypes
import hashlib
import os
import random
import select
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.erofs import BLOCK, BlobLayout, ImageFile, mount_image, write_image
from kvol.mounting import unmount

pytestmark = pytest.mark.root

MTIME = 1_700_000_000_123_456_789


def build(
    root: Path, contents: dict[str, bytes], dirs: tuple[str, ...] = ()
) -> tuple[Path, Path, dict[str, ImageFile]]:
    """An image of ``contents`` and its blob, the blob filled with every file's bytes
    unless told otherwise; equal contents share one extent."""
    layout = BlobLayout()
    files = {}
    for i, (rel, data) in enumerate(contents.items()):
        offset = layout.place(hashlib.sha256(data).hexdigest(), len(data))
        files[rel] = ImageFile(len(data), (0o644, 0o755, 0o600, 0o4711)[i % 4], MTIME + i, offset)
    image, blob = root / "meta.img", root / "blob"
    write_image(image, files, dirs, blob_bytes=layout.size, mtime_ns=MTIME)
    with open(blob, "wb") as out:
        out.truncate(layout.size)
    return image, blob, files


def fill(blob: Path, contents: dict[str, bytes], files: dict[str, ImageFile]) -> None:
    fd = os.open(blob, os.O_WRONLY)
    try:
        for rel, data in contents.items():
            os.pwrite(fd, data, files[rel].blob_offset)
    finally:
        os.close(fd)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "mnt"
    where.mkdir()
    yield where
    unmount(where, lazy=True)


def test_a_mounted_image_shows_every_file_with_its_bytes_mode_and_mtime(
    tmp_path: Path, target: Path
) -> None:
    rng = random.Random(7)
    shared = os.urandom(9000)
    contents: dict[str, bytes] = {
        "top.txt": b"top",
        "a/same-1": shared,
        "b/c/same-2": shared,
        "empty-file": b"",
        "n" * 255: b"longest name",
        "ünï/çødé ✓": b"utf-8 names",
        "d/exact-block": os.urandom(BLOCK),
        "d/one-over": os.urandom(BLOCK + 1),
    }
    for i in range(300):  # several blocks of entries in one directory, in byte order
        contents[f"many/{rng.choice('AZaz-._~')}{i:04d}" + "x" * rng.randrange(40)] = os.urandom(
            rng.randrange(0, 3 * BLOCK)
        )
    image, blob, files = build(tmp_path, contents, dirs=("empty/dir", "a"))
    fill(blob, contents, files)
    mount_image(image, blob, target)

    seen_files, seen_dirs = set(), set()
    for dirpath, dirnames, filenames in os.walk(target):
        rel_dir = os.path.relpath(dirpath, target)
        seen_dirs.update(os.path.normpath(os.path.join(rel_dir, d)) for d in dirnames)
        seen_files.update(os.path.normpath(os.path.join(rel_dir, f)) for f in filenames)
    assert seen_files == set(contents)
    assert seen_dirs == {"a", "b", "b/c", "d", "empty", "empty/dir", "many", "ünï"}
    for rel, data in contents.items():
        st = os.lstat(target / rel)
        record = files[rel]
        assert (target / rel).read_bytes() == data, rel
        assert (st.st_size, st.st_mode & 0o7777, st.st_mtime_ns, st.st_uid) == (
            record.size,
            record.mode,
            record.mtime_ns,
            0,
        ), rel
    assert os.stat(target / "a/same-1").st_ino != os.stat(target / "b/c/same-2").st_ino
    assert os.stat(target / "b").st_nlink == 3  # itself, ".", and c's ".."
    assert os.stat(target / "empty/dir").st_mtime_ns == MTIME
    with pytest.raises(OSError):
        (target / "new").write_bytes(b"read-only")


def test_a_file_larger_than_4_gib_maps_to_its_own_extent_of_a_sparse_blob(
    tmp_path: Path, target: Path
) -> None:
    layout = BlobLayout()
    first = layout.place("small", 10)
    big_size = (5 << 30) + 123
    big = layout.place("big", big_size)
    files = {
        "small": ImageFile(10, 0o644, MTIME, first),
        "big": ImageFile(big_size, 0o644, MTIME, big),
    }
    image, blob = tmp_path / "meta.img", tmp_path / "blob"
    write_image(image, files, blob_bytes=layout.size)
    with open(blob, "wb") as out:
        out.truncate(layout.size)
        os.pwrite(out.fileno(), b"0123456789", first)
        os.pwrite(out.fileno(), b"tail", big + big_size - 4)
    mount_image(image, blob, target)
    assert (target / "small").read_bytes() == b"0123456789"
    assert os.stat(target / "big").st_size == big_size
    with open(target / "big", "rb") as f:
        f.seek(big_size - 4)
        assert f.read() == b"tail"


# fanotify (linux/fanotify.h): a pre-content group, and the range record of its events.
FAN_CLOEXEC, FAN_NONBLOCK, FAN_CLASS_PRE_CONTENT, FAN_MARK_ADD = 0x1, 0x2, 0x8, 0x1
FAN_PRE_ACCESS, FAN_ALLOW, FAN_EVENT_INFO_TYPE_RANGE = 0x100000, 0x1, 6
AT_FDCWD = -100

READER = """
import mmap, sys
path, offset, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
    sys.stdout.buffer.write(m[offset : offset + length])
"""


def test_reading_a_file_asks_the_blob_for_its_range_only_mmap_included(
    tmp_path: Path, target: Path
) -> None:
    """The premise of filling the blob on demand: with the blob marked for pre-content
    events before the mount, each read of a file (a page fault of a mapping too) raises
    an event with the blob range it needs, and waits for the answer; a range filled then
    reads back right."""
    contents = {f"f{i}": os.urandom(20_000 + i) for i in range(10)}
    contents["large"] = os.urandom(16 << 20)
    image, blob, files = build(tmp_path, contents)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.fanotify_mark.argtypes = [
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint64,
        ctypes.c_int,
        ctypes.c_char_p,
    ]
    flags = FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK
    group = libc.fanotify_init(flags, os.O_RDWR | os.O_LARGEFILE)
    assert group >= 0, os.strerror(ctypes.get_errno())
    assert libc.fanotify_mark(group, FAN_MARK_ADD, FAN_PRE_ACCESS, AT_FDCWD, bytes(blob)) == 0
    source = bytearray(os.path.getsize(blob))  # what the store would give
    for rel, data in contents.items():
        source[files[rel].blob_offset : files[rel].blob_offset + len(data)] = data
    asked: list[tuple[int, int]] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if not select.select([group], [], [], 0.1)[0]:
                continue
            buf = os.read(group, 65536)
            at = 0
            while at < len(buf):
                length, _, _, meta_len, _mask, fd, _ = struct.unpack_from("IBBHQii", buf, at)
                info = at + meta_len
                while info < at + length:
                    kind, _, info_len = struct.unpack_from("BBH", buf, info)
                    if kind == FAN_EVENT_INFO_TYPE_RANGE:
                        offset, count = struct.unpack_from("QQ", buf, info + 8)
                        asked.append((offset, count))
                        os.pwrite(fd, source[offset : offset + count], offset)
                    info += info_len
                os.write(group, struct.pack("iI", fd, FAN_ALLOW))
                os.close(fd)
                at += length

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        mount_image(image, blob, target)
        assert sorted(os.listdir(target)) == sorted(contents)  # names need no blob read
        assert asked == []

        def read(rel: str, offset: int, length: int) -> bytes:
            # Another process: a fault here would hold this one's GIL from the server.
            return subprocess.run(
                [sys.executable, "-c", READER, str(target / rel), str(offset), str(length)],
                capture_output=True,
                check=True,
                timeout=60,
            ).stdout

        assert read("f3", 0, 1 << 30) == contents["f3"]
        start, end = files["f3"].blob_offset, files["f3"].blob_offset + len(contents["f3"])
        assert asked and all(start <= o and o + n <= -(-end // BLOCK) * BLOCK for o, n in asked)

        asked.clear()
        middle = 8 << 20
        assert read("large", middle, 100) == contents["large"][middle : middle + 100]
        wanted = files["large"].blob_offset + middle
        assert any(o <= wanted < o + n for o, n in asked)
        assert sum(n for _, n in asked) < len(contents["large"]) // 4  # not the whole file
    finally:
        unmount(target, lazy=True)
        stop.set()
        server.join(5)
        os.close(group)
