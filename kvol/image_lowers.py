"""Snapshots whose tree is an EROFS image with its data in a blob filled as it is read.

A snapshot of this kind holds ``image`` (names, sizes, modes, times) and ``blob`` (every
distinct content, sparse until fetched), beside the snapshot's index, and ``tree``,
where the image is mounted read-only: overlays use it as their lower layer like any
snapshot's tree. Making one writes two files, whatever the number of files in the
volume; no content is fetched until something reads it (see kvol/blobfill.py).

Which record sits where in the blob follows from the snapshot's records alone (laid out
in path order), so a restarted plugin finds it again from the index; the image carries a
digest of that layout, checked then: a layout that disagrees with the image would serve
one file's bytes as another's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from kvol.blobfill import BlobFiller
from kvol.erofs import BlobLayout, ImageFile, image_uuid, mount_image, write_image
from kvol.errors import CorruptData
from kvol.model import FileRecord, State
from kvol.mounting import is_mountpoint, unmount

IMAGE = "image"
BLOB = "blob"

Contents = list[tuple[int, FileRecord]]


def is_image(snapshot: Path) -> bool:
    return (snapshot / IMAGE).exists()


def _layout(records: Mapping[str, FileRecord]) -> tuple[BlobLayout, dict[str, ImageFile], Contents]:
    """Where each record's content goes in the blob (in path order, one extent per
    distinct content), the image's files, and the contents to fill: (blob offset,
    record) for each distinct content with bytes."""
    layout = BlobLayout()
    place, placed = layout.place, layout.offsets
    files: dict[str, ImageFile] = {}
    contents: Contents = []
    for rel in sorted(records):
        record = records[rel]
        known = len(placed)
        # By content and size: a record whose size disagrees with its content's (the
        # log may hold one) must not get a longer view of that content's extent.
        offset = place(f"{record.hash}:{record.size}", record.size)
        # Only the permission bits are applied (see fsops.safe_mode).
        files[rel] = ImageFile(record.size, record.mode & 0o777, record.mtime_ns, offset)
        # An empty content takes no room: its offset is where the next one starts, so
        # only the extents with bytes are listed.
        if len(placed) > known and record.size:
            contents.append((offset, record))
    return layout, files, contents


def _digest(layout: BlobLayout, contents: Contents) -> bytes:
    """16 bytes that change with any record's place in the blob."""
    h = hashlib.sha256(f"{layout.size}\n".encode())
    h.update("".join(f"{offset} {r.hash} {r.size}\n" for offset, r in contents).encode())
    return h.digest()[:16]


def write(state: State, snapshot: Path) -> Contents:
    """The image and the empty blob of ``state`` in ``snapshot``; returns the contents
    (blob offset, record) the blob is filled with."""
    layout, files, contents = _layout(state.files)
    write_image(
        snapshot / IMAGE,
        files,
        state.all_dirs(),
        blob_bytes=layout.size,
        uuid=_digest(layout, contents),
    )
    with open(snapshot / BLOB, "wb") as blob:
        blob.truncate(layout.size)
    return contents


def contents_of(snapshot: Path, records: Mapping[str, FileRecord]) -> Contents:
    """The contents of the blob of ``snapshot``, whose files are ``records`` (from its
    index); CorruptData unless the image was laid out the same way."""
    layout, _, contents = _layout(records)
    if image_uuid(snapshot / IMAGE) != _digest(layout, contents):
        raise CorruptData(
            f"snapshot {snapshot}: its image does not match its index (another layout)"
        )
    return contents


def attach(
    snapshot: Path,
    tree: Path,
    volume_id: str,
    filler: BlobFiller,
    contents: Callable[[], Contents],
) -> None:
    """Watch the snapshot's blob (with ``contents()``, unless it is watched already),
    then mount its image at ``tree`` unless it is mounted (the watch comes first: only
    the mount's own open of the blob raises the events)."""
    if not filler.knows(snapshot / BLOB):
        filler.add(snapshot / BLOB, volume_id, contents())
    if not is_mountpoint(tree):
        os.makedirs(tree, exist_ok=True)
        mount_image(snapshot / IMAGE, snapshot / BLOB, tree)


def detach(snapshot: Path, tree: Path, filler: BlobFiller) -> None:
    """Unmount the image (refused while busy) and stop filling its blob."""
    unmount(tree)
    if (snapshot / BLOB).exists():
        filler.remove(snapshot / BLOB)
