"""A plain working copy is busy however a process reaches it: through a bind mount of the
copy elsewhere (as pods reach it at the kubelet's target path) as much as by its own path."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.errors import VolumeBusy
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import write

HOLD_OPEN = """
import sys, time
handle = open(sys.argv[1], sys.argv[2])
print("ready", flush=True)
time.sleep(120)
"""

# A shared mapping, its descriptor closed: writes through it go to the mapped inode.
HOLD_MAPPED = """
import mmap, sys, time
with open(sys.argv[1], "r+b") as f:
    mapped = mmap.mmap(f.fileno(), 0)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def copies(repo: Repo, tmp_path: Path) -> Iterator[tuple[WorkingCopy, WorkingCopy]]:
    writer = WorkingCopy.create(repo, tmp_path / "writer")
    write(writer.root, "a.txt", "first")
    write(writer.root, "sub/b.txt", "first")
    writer.commit()
    reader = WorkingCopy.create(repo, tmp_path / "reader")
    write(writer.root, "a.txt", "second")
    writer.commit()
    yield writer, reader
    writer.close(final_commit=False)
    reader.close(final_commit=False)


@pytest.fixture
def bind_target(copies: tuple[WorkingCopy, WorkingCopy], tmp_path: Path) -> Iterator[Path]:
    """The reader's copy, bind-mounted elsewhere (a real mount)."""
    _, reader = copies
    target = tmp_path / "kubelet" / "pods" / "uid" / "mount"
    target.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(reader.root), str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


def hold(args: list[str], **kwargs: object) -> subprocess.Popen[str]:
    child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, **kwargs)  # type: ignore[call-overload]
    return child  # type: ignore[no-any-return]


def stop(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait(timeout=10)


@pytest.mark.parametrize("mode", ["r", "a"])
def test_a_file_held_open_through_a_bind_mount_blocks_reload(
    copies: tuple[WorkingCopy, WorkingCopy], bind_target: Path, mode: str
) -> None:
    _, reader = copies
    held = bind_target / "sub" / "b.txt"
    child = hold([sys.executable, "-c", HOLD_OPEN, str(held), mode])
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with pytest.raises(VolumeBusy) as info:
            reader.reload()
        assert child.pid in [pid for pid, _, _ in info.value.holders]
        assert str(held) in str(info.value)
        assert reader.status().base_seq == 1
    finally:
        stop(child)
    reader.reload()
    assert (bind_target / "a.txt").read_text() == "second"


def test_a_file_mapped_through_a_bind_mount_blocks_reload_after_its_descriptor_closed(
    copies: tuple[WorkingCopy, WorkingCopy], bind_target: Path
) -> None:
    _, reader = copies
    child = hold([sys.executable, "-c", HOLD_MAPPED, str(bind_target / "sub" / "b.txt")])
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with pytest.raises(VolumeBusy) as info:
            reader.reload()
        assert child.pid in [pid for pid, _, _ in info.value.holders]
    finally:
        stop(child)
    reader.reload()


def test_a_working_directory_inside_a_bind_mount_blocks_reload(
    copies: tuple[WorkingCopy, WorkingCopy], bind_target: Path
) -> None:
    _, reader = copies
    child = hold(["sleep", "120"], cwd=bind_target / "sub")
    try:
        with pytest.raises(VolumeBusy) as info:
            reader.reload()
        assert child.pid in [pid for pid, _, _ in info.value.holders]
    finally:
        stop(child)
    reader.reload()


def test_files_held_outside_the_copy_on_the_same_filesystem_do_not_block_reload(
    copies: tuple[WorkingCopy, WorkingCopy], bind_target: Path, tmp_path: Path
) -> None:
    _, reader = copies
    outside = write(tmp_path, "elsewhere/file", "not in the copy")
    child = hold([sys.executable, "-c", HOLD_OPEN, str(outside), "r"])
    cwd_child = hold(["sleep", "120"], cwd=tmp_path / "elsewhere")
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        result = reader.reload()
        assert result.to_seq == 2
    finally:
        stop(child)
        stop(cwd_child)
