"""A filesystem of its own for a test, and the disk as a power loss would leave it.

The filesystem is ext4 in an image file, mounted through a loop device. The disk as it
is at one instant, without a sync, is a copy of that image file: what the kernel has
written to the device so far, and not the dirty pages it still holds. Mounted, that copy
is the filesystem as a machine that lost power then would find it (its journal replayed).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

IMAGE_BYTES = 64 << 20


@contextmanager
def mounted(image: Path, mountpoint: Path) -> Iterator[Path]:
    mountpoint.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


@contextmanager
def own_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """An empty ext4 filesystem mounted at ``tmp_path/disk``: (its image, its root)."""
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(IMAGE_BYTES)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    with mounted(image, tmp_path / "disk") as root:
        yield image, root


@contextmanager
def after_power_loss(image: Path, tmp_path: Path) -> Iterator[Path]:
    """The filesystem of ``image`` as the disk holds it now, mounted."""
    crashed = tmp_path / "crashed.img"
    shutil.copyfile(image, crashed)
    with mounted(crashed, tmp_path / "crashed") as root:
        yield root
