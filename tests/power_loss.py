"""A filesystem of its own for a test, and the disk as a power loss would leave it.

The filesystem is ext4 in an image file, mounted through a loop device. The disk as it
is at one instant, without a sync, is a copy of that image file: what the kernel has
written to the device so far, and not the dirty pages it still holds. Mounted, that copy
is the filesystem as a machine that lost power then would find it (its journal replayed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

IMAGE_BYTES = 64 << 20


@contextmanager
def mounted(image: Path, mountpoint: Path) -> Iterator[Path]:
    mountpoint.mkdir(exist_ok=True)
    options = "loop"
    found = subprocess.run(
        ["blkid", "-o", "value", "-s", "TYPE", str(image)], capture_output=True, text=True
    )
    if found.stdout.strip() == "xfs":
        options += ",nouuid"  # the disk after a power loss is a copy of one still mounted
    subprocess.run(["mount", "-o", options, str(image), str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


#: How each filesystem the tests run on is made, and the least size it takes.
MKFS = {
    "ext4": (["mkfs.ext4", "-q", "-F"], 64 << 20),
    "btrfs": (["mkfs.btrfs", "-q", "-f"], 128 << 20),
    "xfs": (["mkfs.xfs", "-q", "-f"], 320 << 20),
}


@contextmanager
def own_disk(tmp_path: Path, fstype: str = "ext4") -> Iterator[tuple[Path, Path]]:
    """An empty filesystem of ``fstype`` mounted at ``tmp_path/disk``: (its image, its
    root)."""
    image = tmp_path / "disk.img"
    mkfs, size = MKFS[fstype]
    if shutil.which(mkfs[0]) is None:
        pytest.fail(f"{mkfs[0]} is missing: hack/install-debian-deps.sh installs it")
    with image.open("wb") as f:
        f.truncate(size)
    subprocess.run([*mkfs, str(image)], check=True)
    try:
        with mounted(image, tmp_path / "disk") as root:
            yield image, root
    finally:
        image.unlink()  # hundreds of MiB for some filesystems


def commit_names(directory: Path) -> None:
    """What a filesystem does with a directory's names within seconds, now (an fsync of
    it: on ext4 and xfs every name written so far, on btrfs that directory's)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def after_power_loss(image: Path, tmp_path: Path) -> Iterator[Path]:
    """The filesystem of ``image`` as the disk holds it now, mounted."""
    crashed = tmp_path / "crashed.img"
    # What the device holds, holes kept as holes (the page cache of the image file is
    # what the loop device wrote, so reading it reads the device).
    subprocess.run(["cp", "--sparse=always", str(image), str(crashed)], check=True)
    try:
        with mounted(crashed, tmp_path / "crashed") as root:
            yield root
    finally:
        crashed.unlink()


@contextmanager
def disk_out_of_room(tmp_path: Path, room: int) -> Iterator[Path]:
    """An ext4 filesystem mounted at ``tmp_path/disk`` whose device has only ``room``
    bytes behind it, as a thin-provisioned volume out of space: the filesystem takes more
    than that, writing it back fails, and syncs report the failure (EIO or ENOSPC)."""
    backing = tmp_path / "backing"
    backing.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", str(backing)], check=True
    )
    try:
        image = backing / "disk.img"
        with image.open("wb") as f:
            f.truncate(2 * IMAGE_BYTES)
        subprocess.run([*MKFS["ext4"][0], str(image)], check=True)
        with mounted(image, tmp_path / "disk") as root:
            yield root
    finally:
        subprocess.run(["umount", str(backing)], check=True)
