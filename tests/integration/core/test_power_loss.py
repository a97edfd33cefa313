"""A power loss right after a copy is built, reloaded or committed leaves it as its index
says: every file holds what the index records, and every file a reload or commit removed
stays removed (see tests/power_loss.py for how the disk after a power loss is made). On
ext4, btrfs and xfs: what each needs synced differs (on ext4 one fsync commits every
change to names, on btrfs it does not)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.fsops import SYNC_EACH_LIMIT
from kvol.repo import Repo
from kvol.store import FilesystemStore, Store
from kvol.workcopy import WorkingCopy
from tests.integration.core.test_reload_crash import run_and_kill
from tests.power_loss import after_power_loss, commit_names, own_disk
from tests.unit.core.helpers import CountingStore, write

pytestmark = pytest.mark.usefixtures("repo")


@pytest.fixture(params=["ext4", "btrfs", "xfs"])
def disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, Path]]:
    with own_disk(tmp_path, request.param) as found:
        yield found


def files_of_tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".kvol") for part in p.relative_to(root).parts)
    }


def files_of(copy: WorkingCopy) -> dict[str, bytes]:
    return files_of_tree(copy.root)


def expect_clean(root: Path, store: Store, want: dict[str, bytes]) -> None:
    copy = WorkingCopy.open(root, store=store)
    try:
        status = copy.status()
        assert (status.changed, status.deleted) == ((), ()), (
            "after a power loss, files the index called clean read as changed: "
            f"changed {status.changed}, deleted {status.deleted}"
        )
        assert files_of(copy) == want
    finally:
        copy.close(final_commit=False)


#: Changed paths of a commit or reload: synced one by one, and syncing the whole
#: filesystem (more than SYNC_EACH_LIMIT).
CHANGED = [20, SYNC_EACH_LIMIT + 10]


def commit_new_files(copy: WorkingCopy, words: str, count: int = 20) -> dict[str, bytes]:
    """Files of a few KiB, never synced by their writer, committed; returns the copy's
    files and closes it."""
    for n in range(count):
        write(copy.root, f"d{n % 3}/f{n}", f"{words} {n} " * 500)
    copy.commit()
    files = files_of(copy)
    copy.close(final_commit=False)
    return files


def test_a_built_copy_holds_its_files_after_a_power_loss(
    repo: Repo, store: Store, disk: tuple[Path, Path], tmp_path: Path
) -> None:
    image, disk_root = disk
    want = commit_new_files(WorkingCopy.create(repo, tmp_path / "writer"), "content")

    WorkingCopy.create(repo, disk_root / "copy").close(final_commit=False)

    with after_power_loss(image, tmp_path) as crashed:
        expect_clean(crashed / "copy", store, want)


@pytest.mark.parametrize("count", CHANGED)
def test_a_reloaded_copy_holds_its_files_after_a_power_loss(
    repo: Repo, store: Store, disk: tuple[Path, Path], tmp_path: Path, count: int
) -> None:
    image, disk_root = disk
    writer = WorkingCopy.create(repo, tmp_path / "writer")
    write(writer.root, "old", "there before the copy was made")
    write(writer.root, "gone", "deleted after the copy was made")
    writer.commit()
    reader = WorkingCopy.create(repo, disk_root / "copy")
    for n in range(count):
        write(writer.root, f"new/deeper/f{n}", f"written after {n} " * 500)
    (writer.root / "gone").unlink()
    writer.commit()
    want = files_of(writer)
    writer.close(final_commit=False)

    reader.reload()
    reader.close(final_commit=False)

    with after_power_loss(image, tmp_path) as crashed:
        expect_clean(crashed / "copy", store, want)


@pytest.mark.parametrize("count", CHANGED)
def test_a_committed_copy_holds_its_files_after_a_power_loss(
    repo: Repo, store: Store, disk: tuple[Path, Path], tmp_path: Path, count: int
) -> None:
    # Files written by a program that never synced them: once committed, the index calls
    # them clean, and a power loss must not leave them short (the next commit would
    # publish them over what this one published).
    image, disk_root = disk
    want = commit_new_files(WorkingCopy.create(repo, disk_root / "copy"), "written here", count)

    with after_power_loss(image, tmp_path) as crashed:
        expect_clean(crashed / "copy", store, want)


@pytest.mark.parametrize("count", CHANGED)
def test_what_a_commit_removed_and_moved_stays_so_after_a_power_loss(
    repo: Repo, store: Store, disk: tuple[Path, Path], tmp_path: Path, count: int
) -> None:
    # Removals and moves on record but not on disk would come back after a power loss as
    # new files, and the next commit would publish again what this one deleted.
    image, disk_root = disk
    writer = WorkingCopy.create(repo, tmp_path / "writer")
    for n in range(count):
        write(writer.root, f"old/d{n % 3}/f{n}", f"committed {n} " * 100)
    write(writer.root, "tree/a/b", "a tree removed whole")
    write(writer.root, "kept/moved", "moved to a new directory")
    writer.commit()
    writer.close(final_commit=False)
    copy = WorkingCopy.create(repo, disk_root / "copy")
    copy.close(final_commit=False)
    os.sync()

    copy = WorkingCopy.open(disk_root / "copy", store=store)
    for n in range(count):
        (copy.root / f"old/d{n % 3}/f{n}").unlink()
    shutil.rmtree(copy.root / "tree")
    (copy.root / "new/place").mkdir(parents=True)
    (copy.root / "kept/moved").rename(copy.root / "new/place/moved")
    result = copy.commit()
    assert (result.files, result.deleted) == (1, count + 4)  # the files, tree, tree/a, old/*
    want = files_of(copy)
    copy.close(final_commit=False)

    with after_power_loss(image, tmp_path) as crashed:
        expect_clean(crashed / "copy", store, want)


def test_a_copy_committed_to_a_store_on_its_own_filesystem_holds_its_files_after_a_power_loss(
    disk: tuple[Path, Path], tmp_path: Path
) -> None:
    # The store's sync before the entry is one of the whole filesystem: it covers the copy.
    image, disk_root = disk
    store = FilesystemStore(disk_root / "store")
    Catalog(store).create("vol")
    copy = WorkingCopy.create(Catalog(store).repo("vol"), disk_root / "copy")
    want = commit_new_files(copy, "written here")

    with after_power_loss(image, tmp_path) as crashed:
        expect_clean(crashed / "copy", FilesystemStore(crashed / "store"), want)


# On ext4 (data=ordered) only: elsewhere a move a reload made is not on the disk before a
# sync either (btrfs, xfs keep it in memory), so nothing the kill left can be damaged.
@pytest.mark.parametrize("disk", ["ext4"], indirect=True)
def test_a_reload_cut_short_by_a_power_loss_leaves_no_file_damaged(
    repo: Repo, store: CountingStore, disk: tuple[Path, Path], tmp_path: Path
) -> None:
    # Killed before its eleventh move into place, then the power goes (the journal has
    # committed those moves: it does within seconds, and any fsync commits it at once).
    # Each file's writeback started before its move, so on ext4 (data=ordered) the data
    # reached the disk before the journal recorded the move: every file the reload made
    # is whole or not there, and the copy settles with nothing to commit. (Files it
    # replaces are flushed by ext4 on the move in any case: these are new.)
    image, disk_root = disk
    writer = WorkingCopy.create(repo, tmp_path / "writer")
    write(writer.root, "first", "there before the copy was made")
    writer.commit()
    WorkingCopy.create(repo, disk_root / "copy").close(final_commit=False)
    for n in range(20):
        write(writer.root, f"new/f{n}", f"second {n} " * 5000)
    writer.commit()
    new = files_of(writer)
    writer.close(final_commit=False)

    run_and_kill("reload", disk_root / "copy", store, repo, 10)
    commit_names(disk_root)

    with after_power_loss(image, tmp_path) as crashed:
        found = files_of_tree(crashed / "copy")
        damaged = sorted(rel for rel, data in found.items() if data != new[rel])
        assert not damaged, f"damaged by the power loss: {damaged}"
        assert len(found) == 1 + 10  # the moves it made
        expect_clean(crashed / "copy", FilesystemStore(store.root), found)
