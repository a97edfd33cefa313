"""Fixtures for the overlay working copy's tests on real overlay mounts (root only)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.mounting import overlay_supported
from kvol.overlay import ContentCache, Lowers, OverlayWorkingCopy
from kvol.repo import Repo
from kvol.store import FilesystemStore


@pytest.fixture(autouse=True)
def _needs_overlay() -> None:
    if not overlay_supported():
        pytest.fail("these tests need root and overlayfs (run them as root)", pytrace=False)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    store = FilesystemStore(tmp_path / "store")
    Catalog(store).create("vol")
    return Catalog(store).repo("vol")


@pytest.fixture
def lowers(tmp_path: Path) -> Lowers:
    return Lowers(tmp_path / "lowers", ContentCache(tmp_path / "cache"))


@pytest.fixture
def mounted() -> Iterator[list[OverlayWorkingCopy]]:
    """The copies a test mounts, closed and unmounted after it."""
    copies: list[OverlayWorkingCopy] = []
    yield copies
    for wc in copies:
        wc.close(final_commit=False)
        wc.unmount()
