"""Per-volume limits: enforced at commit, with a clear error; nothing is published and the
working copy keeps its files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.errors import LimitExceeded
from kvol.model import Limits
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import CountingStore, log_seqs, tree, volume_tree, write


def limited_copy(catalog: Catalog, tmp_path: Path, limits: Limits, version: int = 2) -> WorkingCopy:
    catalog.create("limited", version=version, limits=limits)
    return WorkingCopy.create(catalog.repo("limited"), tmp_path / "wc")


def assert_refused(wc: WorkingCopy, store: CountingStore, match: str) -> None:
    """The commit fails with ``match`` in its message, publishes nothing, and keeps the files."""
    seqs = log_seqs(store, wc.repo.volume_id)
    local = tree(wc.root)
    status = wc.status()
    with pytest.raises(LimitExceeded, match=match) as info:
        wc.commit()
    assert "nothing was published" in str(info.value)
    assert log_seqs(store, wc.repo.volume_id) == seqs
    assert wc.repo.head() == (seqs[-1] if seqs else 0)
    assert tree(wc.root) == local
    assert wc.status() == status


def test_max_files(catalog: Catalog, store: CountingStore, tmp_path: Path) -> None:
    wc = limited_copy(catalog, tmp_path, Limits(max_files=3))
    for i in range(3):
        write(wc.root, f"f{i}", f"{i}")
    assert wc.commit().seq == 1

    write(wc.root, "f3", "one too many")
    assert_refused(wc, store, "4 files, over its limit of 3")

    # Replacing a file instead of adding one fits.
    (wc.root / "f0").unlink()
    assert wc.commit().seq == 2
    assert set(volume_tree(wc.repo)) == {"f1", "f2", "f3"}
    wc.close(final_commit=False)


def test_max_bytes(catalog: Catalog, store: CountingStore, tmp_path: Path) -> None:
    wc = limited_copy(catalog, tmp_path, Limits(max_bytes=10_000))
    write(wc.root, "a", b"a" * 6000)
    assert wc.commit().seq == 1
    write(wc.root, "b", b"b" * 4001)
    assert_refused(wc, store, "10,001 bytes, over its limit of 10,000")
    write(wc.root, "a", b"a" * 5999)
    assert wc.commit().seq == 2
    assert volume_tree(wc.repo) == tree(wc.root)
    wc.close(final_commit=False)


def test_max_file_size(catalog: Catalog, store: CountingStore, tmp_path: Path) -> None:
    wc = limited_copy(catalog, tmp_path, Limits(max_file_size=300_000))
    write(wc.root, "ok", os.urandom(300_000))
    write(wc.root, "sub/huge", os.urandom(300_001))
    assert_refused(wc, store, "sub/huge is 300,001 bytes, over the volume's file size limit")
    (wc.root / "sub" / "huge").unlink()
    assert wc.commit().seq == 1
    wc.close(final_commit=False)


def test_max_files_per_directory(catalog: Catalog, store: CountingStore, tmp_path: Path) -> None:
    wc = limited_copy(catalog, tmp_path, Limits(max_files_per_directory=3))
    for i in range(3):
        write(wc.root, f"d/f{i}", f"{i}")
    write(wc.root, "e/x", "x")
    assert wc.commit().seq == 1

    write(wc.root, "d/f3", "fourth entry of d")
    assert_refused(wc, store, "directory d would hold 4 entries")

    # A subdirectory is an entry of its directory too.
    (wc.root / "d" / "f3").unlink()
    (wc.root / "d" / "sub").mkdir()
    assert_refused(wc, store, "directory d would hold 4 entries")

    (wc.root / "d" / "sub").rmdir()
    write(wc.root, "f", "root entry")
    write(wc.root, "g", "root entry")
    assert_refused(wc, store, "directory / would hold 4 entries")
    wc.close(final_commit=False)


def test_limits_see_other_writers_files_after_reload(
    catalog: Catalog, store: CountingStore, tmp_path: Path
) -> None:
    catalog.create("shared", limits=Limits(max_files=2))
    repo = catalog.repo("shared")
    one = WorkingCopy.create(repo, tmp_path / "one")
    two = WorkingCopy.create(repo, tmp_path / "two")
    write(one.root, "a", "a")
    write(one.root, "b", "b")
    one.commit()
    two.reload()
    write(two.root, "c", "c")
    assert_refused(two, store, "3 files, over its limit of 2")
    one.close(final_commit=False)
    two.close(final_commit=False)


def test_version_1_default_file_limit_is_enforced(
    catalog: Catalog, store: CountingStore, tmp_path: Path
) -> None:
    # Version 1's default is 500,000 files; an override that keeps the version shows
    # the same check at a size a test can reach.
    wc = limited_copy(catalog, tmp_path, Limits(max_files=5), version=1)
    assert wc.repo.meta.limits.max_files == 5
    for i in range(6):
        write(wc.root, f"{i}", "x")
    assert_refused(wc, store, "6 files, over its limit of 5")
    wc.close(final_commit=False)


def test_files_per_directory_counts_the_commits_own_directory_changes(
    catalog: Catalog, store: CountingStore, tmp_path: Path
) -> None:
    wc = limited_copy(catalog, tmp_path, Limits(max_files_per_directory=3))
    write(wc.root, "d/f0", "0")
    write(wc.root, "d/f1", "1")
    write(wc.root, "d/sub/inner", "i")
    assert wc.commit().seq == 1

    # Removing the subdirectory makes room for a file in the same commit.
    (wc.root / "d" / "sub" / "inner").unlink()
    (wc.root / "d" / "sub").rmdir()
    write(wc.root, "d/f2", "2")
    assert wc.commit().seq == 2
    assert set(volume_tree(wc.repo)) == {"d/f0", "d/f1", "d/f2"}
    wc.close(final_commit=False)


def test_a_volume_racing_writers_left_over_its_limits_takes_commits_that_add_nothing(
    catalog: Catalog, store: CountingStore, tmp_path: Path
) -> None:
    # Each writer's check sees its own view: two of them adding at once can leave the
    # volume over a limit. Edits and deletions must still go through (the way back
    # under it); adding more is refused.
    limits = Limits(max_files=3, max_bytes=100, max_files_per_directory=3)
    first = limited_copy(catalog, tmp_path, limits)
    second = WorkingCopy.create(catalog.repo("limited"), tmp_path / "second")
    for i in range(2):
        write(first.root, f"d/f{i}", "x" * 30)
    first.commit()
    second.reload()
    write(first.root, "d/f2", "x" * 30)
    write(second.root, "d/g", "y" * 30)
    first.commit()
    second.commit()  # its view: 3 files, 90 bytes, 3 entries in d
    second.reload()
    assert len(volume_tree(second.repo)) == 4  # over each limit now

    write(second.root, "d/f0", "edited")  # fewer bytes, no new entry
    assert second.commit().files == 1
    write(second.root, "d/f1", "z" * 29)  # 1 byte fewer
    assert second.commit().files == 1
    write(second.root, "e", "1")
    assert_refused(second, store, "files, over its limit of 3")
    (second.root / "e").unlink()
    (second.root / "d/g").unlink()
    assert second.commit().deleted == 1
    assert set(volume_tree(second.repo)) == {"d/f0", "d/f1", "d/f2"}
    first.close(final_commit=False)
    second.close(final_commit=False)
