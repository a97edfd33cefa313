"""A commit or reload makes just what it changed durable when that is little (a sync of
the whole filesystem would wait for every other writer's data there, on a node every
pod's), and the whole filesystem when it is much; the per-path sync never follows a
symlink, never opens what is not a file or directory, and leaves nothing open."""

from __future__ import annotations

import os
import resource
import threading
import time
from pathlib import Path

import pytest

from kvol import fsops
from kvol.catalog import Catalog
from kvol.fsops import SYNC_EACH_LIMIT
from kvol.store import open_store
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import write


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_syncing_paths_leaves_nothing_open_and_takes_gone_paths_in_its_stride(
    tmp_path: Path,
) -> None:
    write(tmp_path, "a/b/file", "data")
    write(tmp_path, "a/replaced", "a file where a directory was")
    before = open_descriptors()
    fsops.sync_paths(
        tmp_path,
        ["a/b/file", "a/b", "gone/with/its/parents", "a/replaced/child", "a/b/missing"],
    )
    assert open_descriptors() == before


def test_syncing_paths_opens_no_fifo_and_follows_no_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "copy"
    root.mkdir()
    fifos = [outside / "fifo", root / "fifo"]
    (root / "link").symlink_to(outside / "fifo")
    (root / "dirlink").symlink_to(outside)
    # A writer's open of a FIFO waits for a reader: one that returns says it was opened.
    opened: list[Path] = []

    def wait_for_reader(fifo: Path) -> None:
        os.close(os.open(fifo, os.O_WRONLY))
        opened.append(fifo)

    writers = []
    for fifo in fifos:
        os.mkfifo(fifo)
        writers.append(threading.Thread(target=wait_for_reader, args=(fifo,), daemon=True))
        writers[-1].start()
    fsops.sync_paths(root, ["fifo", "link", "dirlink/fifo"])
    time.sleep(0.2)
    assert opened == []
    for fifo, writer in zip(fifos, writers, strict=True):
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(10)
    assert sorted(opened) == sorted(fifos)


@pytest.mark.parametrize(
    ("changed", "whole_filesystem_syncs"), [(1, 0), (SYNC_EACH_LIMIT, 0), (SYNC_EACH_LIMIT + 1, 1)]
)
def test_a_commit_syncs_its_paths_or_the_filesystem_by_how_many_it_changed(
    tmp_path: Path, whole_syncs: list[str], changed: int, whole_filesystem_syncs: int
) -> None:
    # A store that does not sync: the copy's own sync is the one counted.
    store = open_store(f"{tmp_path / 'store'}?fsync=false")
    Catalog(store).create("vol")
    copy = WorkingCopy.create(Catalog(store).repo("vol"), tmp_path / "copy")
    for n in range(changed):
        write(copy.root, f"f{n}", f"file {n}")
    whole_syncs.clear()
    assert copy.commit().files == changed
    assert len(whole_syncs) == whole_filesystem_syncs
    copy.close(final_commit=False)


@pytest.mark.parametrize(("changed", "whole_filesystem_syncs"), [(3, 0), (SYNC_EACH_LIMIT, 1)])
def test_a_reload_syncs_its_paths_or_the_filesystem_by_how_many_it_changed(
    tmp_path: Path, whole_syncs: list[str], changed: int, whole_filesystem_syncs: int
) -> None:
    store = open_store(f"{tmp_path / 'store'}?fsync=false")
    Catalog(store).create("vol")
    repo = Catalog(store).repo("vol")
    reader = WorkingCopy.create(repo, tmp_path / "reader")
    writer = WorkingCopy.create(repo, tmp_path / "writer")
    for n in range(changed):
        write(writer.root, f"d/f{n}", f"file {n}")  # and d: one more path
    writer.commit()
    whole_syncs.clear()
    reader.reload()
    assert len(whole_syncs) == whole_filesystem_syncs
    assert (reader.root / f"d/f{changed - 1}").read_text() == f"file {changed - 1}"
    for copy in (reader, writer):
        copy.close(final_commit=False)


def test_syncing_paths_deep_in_a_tree_holds_few_descriptors(tmp_path: Path) -> None:
    # 64 files, each 30 directories deep on a path of its own: 1,920 directories to sync.
    changed = ["/".join([f"t{n}", *(f"d{k}" for k in range(30)), "file"]) for n in range(64)]
    for rel in changed:
        write(tmp_path, rel, "data")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(open_descriptors()) + 200, hard))
    try:
        fsops.sync_paths(tmp_path, changed)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
