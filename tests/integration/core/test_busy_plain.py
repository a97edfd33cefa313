"""A plain working copy is busy however a process reaches it: through a bind mount of the
copy elsewhere (as pods reach it at the kubelet's target path) as much as by its own path."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.workcopy import WorkingCopy
from tests.integration.core.holders import HOLD_MAPPED, HOLD_OPEN, reload_refused_for, start, stop
from tests.unit.core.helpers import write


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


@pytest.mark.parametrize("mode", ["r", "a"])
def test_a_file_held_open_through_a_bind_mount_blocks_reload(
    copies: tuple[WorkingCopy, WorkingCopy], bind_target: Path, mode: str
) -> None:
    _, reader = copies
    held = bind_target / "sub" / "b.txt"
    child = start([sys.executable, "-c", HOLD_OPEN, str(held), mode])
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert str(held) in str(reload_refused_for(reader, child))
        assert reader.status().base_seq == 1
    finally:
        stop(child)
    reader.reload()
    assert (bind_target / "a.txt").read_text() == "second"


def test_a_file_mapped_through_a_bind_mount_blocks_reload_after_its_descriptor_closed(
    copies: tuple[WorkingCopy, WorkingCopy], bind_target: Path
) -> None:
    _, reader = copies
    child = start([sys.executable, "-c", HOLD_MAPPED, str(bind_target / "sub" / "b.txt")])
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        reload_refused_for(reader, child)
    finally:
        stop(child)
    reader.reload()


def test_a_working_directory_inside_a_bind_mount_blocks_reload(
    copies: tuple[WorkingCopy, WorkingCopy], bind_target: Path
) -> None:
    _, reader = copies
    child = start(["sleep", "120"], cwd=bind_target / "sub")
    try:
        reload_refused_for(reader, child)
    finally:
        stop(child)
    reader.reload()


def test_files_held_outside_the_copy_on_the_same_filesystem_do_not_block_reload(
    copies: tuple[WorkingCopy, WorkingCopy], bind_target: Path, tmp_path: Path
) -> None:
    _, reader = copies
    outside = write(tmp_path, "elsewhere/file", "not in the copy")
    child = start([sys.executable, "-c", HOLD_OPEN, str(outside), "r"])
    cwd_child = start(["sleep", "120"], cwd=tmp_path / "elsewhere")
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        result = reader.reload()
        assert result.to_seq == 2
    finally:
        stop(child)
        stop(cwd_child)
