"""A writer never hides a lost commit: it neither fills a gap in the log nor takes a store
that lost what it has seen for "already up to date"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvol import errors
from kvol.content import PACK_THRESHOLD
from kvol.errors import CorruptData
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import CountingStore, upload


def commits(repo: Repo, n: int) -> None:
    for i in range(n):
        repo.publish([upload(repo, f"f{i}", os.urandom(PACK_THRESHOLD + 1 + i))], i)


def test_a_commit_never_fills_a_gap_in_the_log(repo: Repo, store: CountingStore) -> None:
    commits(repo, 3)
    lost = store.root / repo.keys.log(2)
    lost.unlink()
    # A writer whose base is before the lost entry would take its position, and the
    # commit it held would vanish with no trace for readers or fsck.
    with pytest.raises(CorruptData, match="gap: entry 2 is missing"):
        repo.publish([upload(repo, "late", b"late")], base=1)
    assert not lost.exists()


def test_a_reload_of_a_copy_ahead_of_the_store_says_the_store_is_behind(
    repo: Repo, store: CountingStore, tmp_path: Path
) -> None:
    commits(repo, 3)
    wc = WorkingCopy.create(repo, tmp_path / "copy")
    assert wc.index.base == 3
    # The store is rolled back to commit 1 (restored from an older backup).
    for seq in (2, 3):
        (store.root / repo.keys.log(seq)).unlink()
    with pytest.raises(errors.KvolError) as raised:
        wc.reload()
    assert type(raised.value).__name__ == "StoreBehind"
    assert wc.index.base == 3


def test_a_reload_that_finds_nothing_new_still_reports_a_gap_after_its_base(
    repo: Repo, store: CountingStore, tmp_path: Path
) -> None:
    commits(repo, 1)
    wc = WorkingCopy.create(repo, tmp_path / "copy")
    commits_after = [upload(repo, f"g{i}", b"x" * (i + 1)) for i in range(2)]
    repo.publish([commits_after[0]], 1)
    repo.publish([commits_after[1]], 2)
    (store.root / repo.keys.log(2)).unlink()
    with pytest.raises(CorruptData, match="gap"):
        wc.reload()
