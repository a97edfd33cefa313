"""Opening a snapshot's blob for filling (kvol/blob_file.py)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from kvol import blob_file
from kvol.model import FileRecord


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_blob_whose_fill_record_cannot_be_opened_leaves_no_descriptor_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"\0" * 4096)
    contents = [(0, FileRecord(4096, 0, 0o644, "00" * 32, ()))]
    real_open = os.open

    def refuse_the_record(path: str | os.PathLike[str], flags: int, *args: int) -> int:
        if str(path).endswith(".filled"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, flags, *args)

    before = _open_fds()
    monkeypatch.setattr(blob_file.os, "open", refuse_the_record)
    with pytest.raises(OSError, match="No space"):
        blob_file.open_blob(blob, "vol", contents)
    monkeypatch.undo()
    assert _open_fds() == before
