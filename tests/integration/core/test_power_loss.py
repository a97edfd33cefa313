"""A power loss right after a copy is built, reloaded or committed leaves it as its index
says: every file holds what the index records, and every file a reload removed stays
removed (see tests/power_loss.py for how the disk after a power loss is made)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.repo import Repo
from kvol.store import FilesystemStore, Store
from kvol.workcopy import WorkingCopy
from tests.power_loss import after_power_loss, own_disk
from tests.unit.core.helpers import write

pytestmark = pytest.mark.usefixtures("repo")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    with own_disk(tmp_path) as found:
        yield found


def files_of(copy: WorkingCopy) -> dict[str, bytes]:
    return {
        str(p.relative_to(copy.root)): p.read_bytes()
        for p in copy.root.rglob("*")
        if p.is_file() and ".kvol" not in p.relative_to(copy.root).parts
    }


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


def commit_new_files(copy: WorkingCopy, words: str) -> dict[str, bytes]:
    """Twenty files of a few KiB, never synced by their writer, committed; returns the
    copy's files and closes it."""
    for n in range(20):
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


def test_a_reloaded_copy_holds_its_files_after_a_power_loss(
    repo: Repo, store: Store, disk: tuple[Path, Path], tmp_path: Path
) -> None:
    image, disk_root = disk
    writer = WorkingCopy.create(repo, tmp_path / "writer")
    write(writer.root, "old", "there before the copy was made")
    write(writer.root, "gone", "deleted after the copy was made")
    writer.commit()
    reader = WorkingCopy.create(repo, disk_root / "copy")
    for n in range(20):
        write(writer.root, f"new/f{n}", f"written after {n} " * 500)
    (writer.root / "gone").unlink()
    writer.commit()
    want = files_of(writer)
    writer.close(final_commit=False)

    reader.reload()
    reader.close(final_commit=False)

    with after_power_loss(image, tmp_path) as crashed:
        expect_clean(crashed / "copy", store, want)


def test_a_committed_copy_holds_its_files_after_a_power_loss(
    repo: Repo, store: Store, disk: tuple[Path, Path], tmp_path: Path
) -> None:
    # Files written by a program that never synced them: once committed, the index calls
    # them clean, and a power loss must not leave them short (the next commit would
    # publish them over what this one published).
    image, disk_root = disk
    want = commit_new_files(WorkingCopy.create(repo, disk_root / "copy"), "written here")

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
