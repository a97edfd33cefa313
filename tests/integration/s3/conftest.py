"""Fault tests of the S3 store: a real MinIO, reached through a fault-injecting proxy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.s3.proxy import Proxy, fault_proxy
from tests.minio import MinioServer, minio, s3_bucket  # noqa: F401 (fixtures)


@pytest.fixture
def proxy(minio: MinioServer) -> Iterator[Proxy]:  # noqa: F811
    with fault_proxy(minio.port) as started:
        yield started
