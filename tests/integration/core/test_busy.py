"""Reload refuses while real processes hold files or working directories in the copy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kvol.errors import VolumeBusy
from kvol.workcopy import WorkingCopy
from tests.integration.core.holders import HOLD_OPEN, reload_refused_for, start, stop
from tests.unit.core.helpers import CountingStore, tree, write


@pytest.mark.parametrize("mode", ["r", "a"])
def test_a_file_held_open_by_another_process_blocks_reload(
    copies: tuple[WorkingCopy, WorkingCopy], mode: str
) -> None:
    _, reader = copies
    child = start([sys.executable, "-c", HOLD_OPEN, str(reader.root / "sub" / "b.txt"), mode])
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        before = tree(reader.root)
        busy = reload_refused_for(reader, child)
        assert f"[{child.pid}]" in str(busy)
        assert str(reader.root / "sub" / "b.txt") in str(busy)
        assert busy.retryable
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
