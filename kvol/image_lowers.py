"""Snapshots whose tree is an EROFS image with its data in a blob filled as it is read.

A snapshot of this kind holds ``image`` (names, sizes, modes, times), ``blob`` (every
distinct content, sparse until fetched), ``contents.json`` (which record sits where in
the blob: what a restarted plugin needs to fill it) and ``tree``, where the image is
mounted read-only: overlays use it as their lower layer like any snapshot's tree. Making
one writes three files, whatever the number of files in the volume; no content is
fetched until something reads it (see kvol/blobfill.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kvol import fsops
from kvol.blobfill import BlobFiller
from kvol.erofs import BlobLayout, ImageFile, mount_image, write_image
from kvol.errors import CorruptData
from kvol.model import FileRecord, State
from kvol.mounting import is_mountpoint, unmount

IMAGE = "image"
BLOB = "blob"
CONTENTS = "contents.json"


def is_image(snapshot: Path) -> bool:
    return (snapshot / IMAGE).exists()


def write(state: State, snapshot: Path) -> list[tuple[int, FileRecord]]:
    """The image, the empty blob and the contents list of ``state`` in ``snapshot``;
    returns the contents (blob offset, record), one per distinct content."""
    layout = BlobLayout()
    files: dict[str, ImageFile] = {}
    contents: dict[int, FileRecord] = {}
    for rel, record in state.files.items():
        offset = layout.place(record.hash, record.size)
        files[rel] = ImageFile(record.size, fsops.safe_mode(record.mode), record.mtime_ns, offset)
        contents.setdefault(offset, record)
    write_image(snapshot / IMAGE, files, state.all_dirs(), blob_bytes=layout.size)
    with open(snapshot / BLOB, "wb") as blob:
        blob.truncate(layout.size)
    listed = [[offset, record.to_list()] for offset, record in contents.items()]
    fsops.write_atomically(snapshot / CONTENTS, json.dumps(listed).encode())
    return list(contents.items())


def contents_of(snapshot: Path) -> list[tuple[int, FileRecord]]:
    try:
        listed = json.loads((snapshot / CONTENTS).read_bytes())
        return [(int(offset), FileRecord.from_list(record)) for offset, record in listed]
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptData(f"snapshot contents {snapshot / CONTENTS} are unreadable") from exc


def attach(
    snapshot: Path,
    tree: Path,
    volume_id: str,
    filler: BlobFiller,
    contents: list[tuple[int, FileRecord]] | None = None,
) -> None:
    """Watch the snapshot's blob, then mount its image at ``tree`` unless it is mounted
    (the watch comes first: only the mount's own open of the blob raises the events)."""
    if not filler.knows(snapshot / BLOB):
        listed = contents_of(snapshot) if contents is None else contents
        filler.add(snapshot / BLOB, volume_id, listed)
    if not is_mountpoint(tree):
        os.makedirs(tree, exist_ok=True)
        mount_image(snapshot / IMAGE, snapshot / BLOB, tree)


def detach(snapshot: Path, tree: Path, filler: BlobFiller) -> None:
    """Unmount the image (refused while busy) and stop filling its blob."""
    unmount(tree)
    if (snapshot / BLOB).exists():
        filler.remove(snapshot / BLOB)
