"""Stores for the model-based tests: a directory, and a real MinIO on loopback.

The bounded runs are part of every test run; ``KVOL_MODEL_LONG=1`` makes them long runs
(many more examples and steps, random rather than fixed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvol import publish_turns
from kvol.mounting import overlay_supported
from kvol.store import FilesystemStore, Store
from tests.minio import MinioServer, minio, s3_bucket  # noqa: F401 (fixtures)
from tests.model.machine import Env


def _directory_store(directory: Path) -> tuple[Store, dict[str, Any]]:
    root = directory / "store"
    return FilesystemStore(root, durable=False), {"kind": "fs", "root": str(root)}


def _durable_directory_store(directory: Path) -> tuple[Store, dict[str, Any]]:
    """As a node's store: content staged until a commit's sync names it (kvol.store.fs)."""
    root = directory / "store"
    spec = {"kind": "fs", "root": str(root), "durable": True}
    return FilesystemStore(root, durable=True), spec


def _needs_overlay() -> None:
    if not overlay_supported():
        pytest.fail("the overlay layout needs root and overlayfs (run as root)", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _publish_lock_dir() -> None:
    """Made before any step: a kill point is an event's number, and the first commit must
    not make directories that the replays after it find there."""
    publish_turns.lock_dir()


@pytest.fixture
def fs_env(tmp_path: Path) -> Env:
    return Env("fs", tmp_path, _directory_store, can_age=True)


@pytest.fixture
def overlay_env(tmp_path: Path) -> Env:
    """The node plugin's copy-on-write copies (overlay mounts) on a filesystem store."""
    _needs_overlay()
    return Env("fs_overlay", tmp_path, _durable_directory_store, can_age=True, layout="overlay")


@pytest.fixture
def image_env(tmp_path: Path) -> Env:
    """Overlay copies over image snapshots whose data is fetched as it is read."""
    _needs_overlay()
    return Env("fs_image", tmp_path, _directory_store, can_age=True, layout="overlay", images=True)


@pytest.fixture
def s3_env(tmp_path: Path, minio: MinioServer, s3_bucket: str) -> Env:  # noqa: F811
    def new_store(directory: Path) -> tuple[Store, dict[str, Any]]:
        prefix = f"{directory.name}/"
        return (
            minio.store(s3_bucket, prefix),
            {"kind": "s3", "url": minio.url(s3_bucket, prefix)},
        )

    return Env("s3", tmp_path, new_store, child_env=minio.env)
