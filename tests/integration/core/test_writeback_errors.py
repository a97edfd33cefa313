"""A commit whose files the disk cannot write back fails and publishes nothing: after
such an error the files are not on the disk, and an index that called them clean would
let a damaged file be published over the volume's once the copy is read again."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvol.copybase import INDEX_FILE
from kvol.errors import WriteBackFailed
from kvol.fsops import SYNC_EACH_LIMIT
from kvol.index import Index
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy
from tests.power_loss import disk_out_of_room

KVOL = str(Path(sys.executable).with_name("kvol"))
ROOM = 24 << 20
WRITTEN = 40 << 20


@pytest.mark.parametrize("files", [1, SYNC_EACH_LIMIT + 1])
def test_a_commit_whose_files_cannot_be_written_back_fails_and_publishes_nothing(
    repo: Repo, tmp_path: Path, files: int
) -> None:
    with disk_out_of_room(tmp_path, ROOM) as disk:
        copy = WorkingCopy.create(repo, disk / "copy")
        try:
            (copy.root / "touched").write_bytes(b"the same bytes")
            copy.commit()
            saved = copy.index.entry_of("touched").stat_key
            (copy.root / "touched").write_bytes(b"the same bytes")  # a new stat
            for n in range(files):
                (copy.root / f"f{n}").write_bytes(os.urandom(WRITTEN // files))
            with pytest.raises(WriteBackFailed) as raised:
                copy.commit()
            assert raised.value.errno in (errno.EIO, errno.ENOSPC)
            assert repo.head() == 1
            # The failed commit leaves the index in memory as it is saved.
            assert copy.index.entry_of("touched").stat_key == saved
        finally:
            copy.close(final_commit=False)


def test_the_command_line_says_so_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "KVOL_STORE": f"file://{tmp_path / 'store'}", "PYTHONSAFEPATH": "1"}
    env.pop("KVOL_MOUNTS", None)

    def kvol(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([KVOL, *args], capture_output=True, text=True, env=env, timeout=120)

    assert kvol("volume", "create", "vol").returncode == 0
    with disk_out_of_room(tmp_path, ROOM) as disk:
        assert kvol("volume", "mount", "vol", str(disk / "copy")).returncode == 0
        (disk / "copy" / "big").write_bytes(os.urandom(WRITTEN))
        done = kvol("volume", "commit", str(disk / "copy"))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvol: error: "), done.stderr
    assert "could not write the working copy's files back" in lines[0]
    assert "No space left on device" in lines[0] or "Input/output error" in lines[0]
    assert kvol("volume", "history", "vol").stdout.count("\n") <= 1, "a commit was published"


def test_a_reload_whose_files_cannot_be_written_back_fails_and_records_nothing(
    repo: Repo, tmp_path: Path
) -> None:
    writer = WorkingCopy.create(repo, tmp_path / "writer")
    with disk_out_of_room(tmp_path, ROOM) as disk:
        reader = WorkingCopy.create(repo, disk / "copy")
        try:
            (writer.root / "big").write_bytes(os.urandom(WRITTEN))
            writer.commit()
            with pytest.raises(WriteBackFailed):
                reader.reload()
            # Tried again, the settling of the failed one finds the disk as it is.
            with pytest.raises(WriteBackFailed):
                reader.reload()
            assert Index.load(reader.meta_dir / INDEX_FILE).base == 0
        finally:
            reader.close(final_commit=False)
    writer.close(final_commit=False)
