"""Where an image snapshot's blob holds each content (kvol/image_lowers.py), without a
mount: every content with bytes is listed once, and the layout is found again from the
snapshot's records alone, or refused when the image was laid out another way."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvol import image_lowers
from kvol.erofs import BLOCK, image_uuid, write_image
from kvol.errors import CorruptData
from kvol.model import FileRecord, Part, State


def record(content: str, size: int) -> FileRecord:
    digest = content * 64
    parts = (Part("b", digest, 0, size),) if size else ()
    return FileRecord(size, 1_700_000_000_000_000_000, 0o644, digest, parts)


def test_every_content_with_bytes_is_listed_once_even_after_an_empty_one(tmp_path: Path) -> None:
    state = State(
        3,
        {
            "a/__init__.py": record("e", 0),  # takes no room: shares the next offset
            "a/mod.py": record("1", 10),
            "b/copy.py": record("1", 10),
            "b/z/__init__.py": record("e", 0),
            "b/z/data": record("2", BLOCK + 1),
        },
    )
    contents = image_lowers.write(state, tmp_path)
    assert [(offset, r.hash[0]) for offset, r in contents] == [(0, "1"), (BLOCK, "2")]
    assert (tmp_path / image_lowers.BLOB).stat().st_size == 3 * BLOCK
    assert image_lowers.contents_of(tmp_path, state.files) == contents


def test_records_other_than_the_image_was_made_of_are_refused(tmp_path: Path) -> None:
    files = {"f": record("1", 10), "g": record("2", 20)}
    image_lowers.write(State(1, dict(files)), tmp_path)
    for changed in (
        {"f": record("1", 10), "g": record("3", 20)},  # another content
        {"f": record("1", 10), "g": record("2", BLOCK + 20)},  # another size
        {"a": record("2", 20), "f": record("1", 10)},  # another order in the blob
        {"f": record("1", 10)},
    ):
        with pytest.raises(CorruptData, match="does not match"):
            image_lowers.contents_of(tmp_path, changed)


def test_the_uuid_written_is_read_back_and_a_non_image_is_refused(tmp_path: Path) -> None:
    write_image(tmp_path / "img", {}, blob_bytes=0, uuid=b"0123456789abcdef")
    assert image_uuid(tmp_path / "img") == b"0123456789abcdef"
    (tmp_path / "other").write_bytes(bytes(4096))
    with pytest.raises(CorruptData, match="not an EROFS image"):
        image_uuid(tmp_path / "other")
    (tmp_path / "short").write_bytes(b"x")
    with pytest.raises(CorruptData, match="too short"):
        image_uuid(tmp_path / "short")
