"""The contract suite runs every test against each store: a directory and a real MinIO."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.store import FilesystemStore, Store
from tests.minio import MinioServer, minio, s3_bucket  # noqa: F401 (fixtures)


@pytest.fixture(params=["fs", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty store of each kind. The S3 one lives under a prefix of a fresh bucket."""
    if request.param == "fs":
        opened: Store = FilesystemStore(tmp_path / "store")
    else:
        server: MinioServer = request.getfixturevalue("minio")
        bucket: str = request.getfixturevalue("s3_bucket")
        opened = server.store(bucket, "volumes-root/")
    try:
        yield opened
    finally:
        opened.close()
