"""Fixtures of the core's integration tests: a shared store directory, real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import CountingStore, write


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "store")


@pytest.fixture
def repo(store: CountingStore) -> Repo:
    Catalog(store).create("vol")
    return Catalog(store).repo("vol")


@pytest.fixture
def copies(repo: Repo, tmp_path: Path) -> Iterator[tuple[WorkingCopy, WorkingCopy]]:
    """A writer and a reader of one volume; the reader is one commit behind."""
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
