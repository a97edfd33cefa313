"""Fixtures of the node plugin's integration tests: a real plugin process, real mounts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.mounting import overlay_supported
from kvol.store import FilesystemStore
from tests.integration.csi.plugin import Kubelet, Plugin, unmount_all
from tests.minio import minio, s3_bucket  # noqa: F401

NAMESPACE = "team-a"


@pytest.fixture(autouse=True)
def _root_with_overlay() -> None:
    if not overlay_supported():
        pytest.fail("the node plugin's tests need root and overlayfs", pytrace=False)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    unmount_all(tmp_path)


@pytest.fixture
def store_dir(workdir: Path) -> Path:
    return workdir / "store"


@pytest.fixture
def catalog(store_dir: Path) -> Catalog:
    store = FilesystemStore(store_dir)
    cat = Catalog.for_namespace(store, NAMESPACE)
    cat.create("data")
    return cat


@pytest.fixture
def plugin(workdir: Path, store_dir: Path, catalog: Catalog) -> Iterator[Plugin]:
    p = Plugin(workdir, f"file://{store_dir}")
    p.start()
    yield p
    p.stop()


@pytest.fixture
def plain_plugin(workdir: Path, store_dir: Path, catalog: Catalog) -> Iterator[Plugin]:
    """A plugin that makes plain copies (no overlay), for tests that drive it themselves."""
    p = Plugin(workdir, f"file://{store_dir}", extra_args=["--layout=plain"])
    p.start()
    yield p
    p.stop()


@pytest.fixture
def kubelet(plugin: Plugin, workdir: Path) -> Kubelet:
    return Kubelet(plugin, workdir / "kubelet")
