"""EROFS image writing that needs no mount: the blob's layout and refused trees (the
mounted images are tested in tests/integration/overlay/test_erofs_image.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvol.erofs import BLOCK, MAX_BLOB_BYTES, BlobLayout, ImageFile, write_image
from kvol.errors import InvalidArgument


def test_contents_get_block_aligned_extents_and_equal_ones_share_one() -> None:
    layout = BlobLayout()
    assert layout.place("a", 1) == 0
    assert layout.place("b", BLOCK + 1) == BLOCK
    assert layout.place("a", 1) == 0
    assert layout.place("empty", 0) == 3 * BLOCK
    assert layout.place("c", BLOCK) == 3 * BLOCK  # an empty content takes no block
    assert layout.size == 4 * BLOCK


def test_a_blob_beyond_what_block_numbers_address_is_refused() -> None:
    layout = BlobLayout()
    layout.place("most", MAX_BLOB_BYTES - BLOCK)
    with pytest.raises(InvalidArgument, match="too large"):
        layout.place("more", 2 * BLOCK)


@pytest.mark.parametrize(
    ("files", "dirs", "message"),
    [
        ({"a": ImageFile(1, 0o644, 0, 0), "a/b": ImageFile(1, 0o644, 0, 0)}, (), "both"),
        ({"a/b": ImageFile(1, 0o644, 0, 0)}, ("a/b",), "both"),
        ({"d/..": ImageFile(1, 0o644, 0, 0)}, (), "not a file path"),
        ({"x" * 256: ImageFile(1, 0o644, 0, 0)}, (), "longer than 255"),
        ({"a": ImageFile(10, 0o644, 0, BLOCK)}, (), "outside the blob"),
        ({"a": ImageFile(10, 0o644, 0, 1)}, (), "outside the blob"),
    ],
)
def test_trees_an_image_cannot_hold_are_refused(
    tmp_path: Path, files: dict[str, ImageFile], dirs: tuple[str, ...], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        write_image(tmp_path / "img", files, dirs, blob_bytes=BLOCK)
    assert not (tmp_path / "img").exists()


def test_the_superblock_names_one_extra_device_the_size_of_the_blob(tmp_path: Path) -> None:
    write_image(tmp_path / "img", {"f": ImageFile(3, 0o644, 0, 0)}, blob_bytes=5 * BLOCK)
    image = (tmp_path / "img").read_bytes()
    assert len(image) % BLOCK == 0
    (magic,) = struct.unpack_from("<I", image, 1024)
    extra_devices, slot = struct.unpack_from("<HH", image, 1024 + 0x56)
    assert (magic, extra_devices) == (0xE0F5E1E2, 1)
    assert struct.unpack_from("<I", image, slot * 128 + 64) == (5,)
    with pytest.raises(InvalidArgument, match="whole number of blocks"):
        write_image(tmp_path / "img2", {}, blob_bytes=BLOCK + 1)
