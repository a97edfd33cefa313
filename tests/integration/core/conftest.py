"""Fixtures of the core's integration tests: a shared store directory, real processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.repo import Repo
from tests.unit.core.helpers import CountingStore


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "store")


@pytest.fixture
def repo(store: CountingStore) -> Repo:
    Catalog(store).create("vol")
    return Catalog(store).repo("vol")
