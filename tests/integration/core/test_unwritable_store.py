"""A final commit to a store that has become unwritable (a read-only mount) raises and
keeps every change in the working copy."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.errors import KvolError
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import CountingStore, log_seqs, tree, volume_tree, write


@pytest.fixture
def read_only(store: CountingStore) -> Iterator[Path]:
    """The store's directory, made read-only for everyone (root too) by a bind mount."""
    target = store.root
    subprocess.run(["mount", "--bind", str(target), str(target)], check=True)
    try:
        subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(target)], check=True, capture_output=True
        )
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_final_commit_to_a_read_only_store_raises_and_keeps_files(
    repo: Repo, store: CountingStore, tmp_path: Path, read_only: Path
) -> None:
    copy = WorkingCopy.create(repo, tmp_path / "wc")
    write(copy.root, "notes.txt", "must survive")
    write(copy.root, "data/big", os.urandom(400_000))
    copy.start_autocommit(3600)

    with pytest.raises(KvolError, match=r"(?i)read-only"):
        copy.close()
    assert tree(copy.root)["notes.txt"] == b"must survive"
    assert set(copy.status().changed) == {"notes.txt", "data/big"}
    assert log_seqs(store, repo.volume_id) == []

    # Writable again: the retried close publishes all of it.
    subprocess.run(["mount", "-o", "remount,bind,rw", str(read_only)], check=True)
    result = copy.close()
    assert result is not None and result.seq == 1
    assert volume_tree(repo) == tree(copy.root)


def test_autocommit_to_a_read_only_store_keeps_retrying(
    repo: Repo, store: CountingStore, tmp_path: Path, read_only: Path
) -> None:
    copy = WorkingCopy.create(repo, tmp_path / "wc")
    write(copy.root, "f", "pending")
    copy.start_autocommit(0.05)
    deadline = time.monotonic() + 10
    while copy.autocommit_error is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert copy.autocommit_error is not None
    assert copy.status().changed == ("f",)

    subprocess.run(["mount", "-o", "remount,bind,rw", str(read_only)], check=True)
    deadline = time.monotonic() + 10
    while "f" not in repo.state().files and time.monotonic() < deadline:
        time.sleep(0.02)
    assert volume_tree(repo) == {"f": b"pending"}
    copy.close()
    assert copy.autocommit_error is None
