"""Reload refuses while real processes hold files or working directories in the copy."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.errors import VolumeBusy
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import CountingStore, tree, write

HOLD_OPEN = """
import sys, time
handle = open(sys.argv[1], sys.argv[2])
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
    # A newer commit, so the reader's reload has work to do.
    write(writer.root, "a.txt", "second")
    writer.commit()
    yield writer, reader
    writer.close(final_commit=False)
    reader.close(final_commit=False)


def start(args: list[str], **kwargs: object) -> subprocess.Popen[str]:
    child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, **kwargs)  # type: ignore[call-overload]
    return child  # type: ignore[no-any-return]


def stop(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait(timeout=10)


@pytest.mark.parametrize("mode", ["r", "a"])
def test_a_file_held_open_by_another_process_blocks_reload(
    copies: tuple[WorkingCopy, WorkingCopy], mode: str
) -> None:
    _, reader = copies
    child = start([sys.executable, "-c", HOLD_OPEN, str(reader.root / "sub" / "b.txt"), mode])
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        before = tree(reader.root)
        with pytest.raises(VolumeBusy) as info:
            reader.reload()
        holders = info.value.holders
        assert child.pid in [pid for pid, _, _ in holders]
        assert f"[{child.pid}]" in str(info.value)
        assert str(reader.root / "sub" / "b.txt") in str(info.value)
        assert info.value.retryable
        assert tree(reader.root) == before
        assert reader.status().base_seq == 1
    finally:
        stop(child)
    reader.reload()
    assert (reader.root / "a.txt").read_text() == "second"


def test_a_process_whose_cwd_is_inside_blocks_reload(
    copies: tuple[WorkingCopy, WorkingCopy],
) -> None:
    _, reader = copies
    child = start(["sleep", "120"], cwd=reader.root / "sub")
    try:
        with pytest.raises(VolumeBusy) as info:
            reader.reload()
        held = {pid: (command, path) for pid, command, path in info.value.holders}
        assert held[child.pid] == ("sleep", str(reader.root / "sub"))
        assert f"sleep[{child.pid}]" in str(info.value)
    finally:
        stop(child)
    assert reader.reload().to_seq == 2


def test_holders_outside_the_copy_or_in_its_metadata_do_not_block(
    copies: tuple[WorkingCopy, WorkingCopy], tmp_path: Path
) -> None:
    _, reader = copies
    (tmp_path / "elsewhere").write_text("x")
    outside = start([sys.executable, "-c", HOLD_OPEN, str(tmp_path / "elsewhere"), "r"])
    meta = start([sys.executable, "-c", HOLD_OPEN, str(reader.root / ".kvol" / "config.json"), "r"])
    try:
        for child in (outside, meta):
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert reader.reload().to_seq == 2
    finally:
        stop(outside)
        stop(meta)


def test_commit_is_not_blocked_by_open_files(
    copies: tuple[WorkingCopy, WorkingCopy], store: CountingStore
) -> None:
    writer, _ = copies
    child = start([sys.executable, "-c", HOLD_OPEN, str(writer.root / "a.txt"), "a"])
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        write(writer.root, "a.txt", "third")
        assert writer.commit().seq == 3
    finally:
        stop(child)
