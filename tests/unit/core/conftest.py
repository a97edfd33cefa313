"""Fixtures of the core's unit tests: a real filesystem store in a temporary directory."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvol import fsops
from kvol.catalog import Catalog
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import CHUNK, CountingStore


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "store")


@pytest.fixture
def catalog(store: CountingStore) -> Catalog:
    return Catalog(store)


@pytest.fixture
def repo(catalog: Catalog) -> Repo:
    catalog.create("vol")
    return catalog.repo("vol")


@pytest.fixture
def chunked(store: CountingStore) -> Repo:
    """A volume with small chunks, so large files are many objects."""
    return Repo.create(store, chunk_size=CHUNK)


@pytest.fixture
def wc(repo: Repo, tmp_path: Path) -> Iterator[WorkingCopy]:
    copy = WorkingCopy.create(repo, tmp_path / "wc")
    yield copy
    copy.close(final_commit=False)


@pytest.fixture
def make_wc(repo: Repo, tmp_path: Path) -> Iterator[Callable[[str], WorkingCopy]]:
    """Open more working copies of the same volume, each in its own directory."""
    made: list[WorkingCopy] = []

    def make(name: str) -> WorkingCopy:
        copy = WorkingCopy.create(repo, tmp_path / name)
        made.append(copy)
        return copy

    yield make
    for copy in made:
        copy.close(final_commit=False)


@pytest.fixture
def whole_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths whose whole filesystem is synced from here on."""
    synced: list[str] = []
    real = fsops.sync_filesystem

    def counted(path: str | os.PathLike[str]) -> None:
        synced.append(os.fspath(path))
        real(path)

    monkeypatch.setattr(fsops, "sync_filesystem", counted)
    return synced
