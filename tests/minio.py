"""A real MinIO server on loopback for tests (built by hack/install-minio.sh).

Import the fixtures into a conftest to use them::

    from tests.minio import minio, s3_bucket  # noqa: F401

``minio`` is one server for the whole session; ``s3_bucket`` a fresh bucket per test.
Tests that stop or kill a server start their own with :func:`start_minio`.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

import obstore
import pytest
from obstore.store import S3Store as ObStore

from kvol.store.s3 import S3Settings, S3Store
from tests.tools import free_port, stop_process, tool

ACCESS_KEY = "kvol-test"
SECRET_KEY = "kvol-test-secret"
REGION = "us-east-1"


@dataclass
class MinioServer:
    binary: str
    data_dir: Path
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs in its environment to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def url(self, bucket: str, prefix: str = "", **options: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"endpoint": self.endpoint, **options}.items())
        return f"s3://{bucket}/{prefix}?{query}"

    def settings(self, bucket: str, prefix: str = "", **overrides: object) -> S3Settings:
        values: dict[str, object] = {
            "bucket": bucket,
            "prefix": prefix,
            "endpoint": self.endpoint,
            "region": REGION,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            **overrides,
        }
        return S3Settings(**values)  # type: ignore[arg-type]

    def store(self, bucket: str, prefix: str = "", **overrides: object) -> S3Store:
        return S3Store(self.settings(bucket, prefix, **overrides))

    def _signed(self, bucket: str, method: Literal["PUT", "HEAD"]) -> urllib.request.Request:
        client = ObStore(
            bucket,
            endpoint=self.endpoint,
            region=REGION,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            client_options={"allow_http": True},
        )
        url = obstore.sign(client, method, "", timedelta(minutes=5))
        return urllib.request.Request(url, method=method)

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (by a request signed with obstore) and return its name."""
        name = name or f"t-{secrets.token_hex(6)}"
        with urllib.request.urlopen(self._signed(name, "PUT"), timeout=30):
            pass
        return name

    # -- process --------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        assert self.process is None, "already running"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.data_dir.parent),
            "MINIO_ROOT_USER": ACCESS_KEY,
            "MINIO_ROOT_PASSWORD": SECRET_KEY,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        }
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps it open)
        self.process = subprocess.Popen(
            [
                self.binary,
                "server",
                "--quiet",
                "--address",
                f"127.0.0.1:{self.port}",
                "--console-address",
                f"127.0.0.1:{free_port()}",
                str(self.data_dir),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        # Health says ready a moment before signed requests stop answering 503 (the
        # server is still loading its users), so wait for a signed request: a HEAD of a
        # bucket that does not exist must answer 404.
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"minio exited with {self.process.returncode}: {self.log_path.read_text()}"
                )
            try:
                urllib.request.urlopen(self._signed("kvol-readiness", "HEAD"), timeout=2).close()
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return
                last = exc
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = exc
            time.sleep(0.1)
        raise RuntimeError(
            f"minio not ready after {timeout}s ({last}): {self.log_path.read_text()}"
        )

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-request, as in a crash."""
        self._stop(signal.SIGKILL)

    def stop(self) -> None:
        self._stop(signal.SIGTERM)

    def _stop(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        stop_process(self.process, sig)
        self.process = None


@contextmanager
def start_minio(directory: Path) -> Iterator[MinioServer]:
    """A MinIO server with its data in ``directory``, stopped on exit."""
    binary = tool("minio", "install-minio.sh")
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    server = MinioServer(binary, data, free_port(), directory / "minio.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    with start_minio(tmp_path_factory.mktemp("minio")) as server:
        yield server


@pytest.fixture
def s3_bucket(minio: MinioServer) -> str:
    """A fresh, empty bucket on the session's MinIO."""
    return minio.create_bucket()
