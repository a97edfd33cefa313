"""A plugin started with --lazy-fetch publishes before the volume's content is on the node,
and a restarted plugin fills what the previous one left (root: overlayfs and fanotify)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.csi import mounts
from kvol.csi.main import parser
from kvol.csi.node import NodeConfig, NodeService
from kvol.csi.resolver import StaticResolver
from kvol.lazy import is_placeholder
from kvol.mounting import mounts_under, overlay_supported
from kvol.repo import Repo
from kvol.store import FilesystemStore
from kvol.workcopy import WorkingCopy
from tests.unit.csi.pods import publish as publish_pod
from tests.unit.csi.pods import unpublish as unpublish_pod

NAMESPACE = "team-a"


@pytest.fixture(autouse=True)
def _root_with_overlay() -> None:
    if not overlay_supported():
        pytest.fail("lazy publish tests need root and overlayfs", pytrace=False)


@pytest.fixture
def files(tmp_path: Path) -> Iterator[dict[str, bytes]]:
    store = FilesystemStore(tmp_path / "store", durable=False)
    meta = Catalog.for_namespace(store, NAMESPACE).create("data")
    wc = WorkingCopy.create(Repo(store, meta.id), tmp_path / "seed", tmp_path / "seed-meta")
    content = {f"f{i}.txt": f"file {i}\n".encode() for i in range(5)}
    content["big.bin"] = secrets.token_bytes(300 << 10)
    for rel, data in content.items():
        (wc.root / rel).write_bytes(data)
    wc.commit()
    wc.close(final_commit=False)
    yield content
    mounts.unmount_tree(tmp_path)


def publish(node: NodeService, tmp_path: Path) -> Path:
    return publish_pod(node, tmp_path, NAMESPACE)


def service(tmp_path: Path, how: str = "entries") -> NodeService:
    config = NodeConfig(
        "node-1", tmp_path / "state", layout="overlay", lazy_fetch=True, lazy_fetch_as=how
    )
    return NodeService(config, StaticResolver(f"file://{tmp_path / 'store'}", 0))


def cache_entries(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "state" / "cache").glob("??/*") if p.is_file()]


def test_lazy_fetch_flag_publishes_first_and_a_restarted_plugin_fills_the_rest(
    tmp_path: Path, files: dict[str, bytes]
) -> None:
    assert parser().parse_args(["--lazy-fetch"]).lazy_fetch
    assert not parser().parse_args([]).lazy_fetch
    assert parser().parse_args([]).lazy_fetch_as == "auto"

    node = service(tmp_path)
    assert node.lowers.cache.lazy is not None
    node.lowers.cache.prefetch = False  # so that what a read fetched shows
    target = publish(node, tmp_path)
    assert sorted(p.name for p in target.iterdir() if p.name != ".kvol") == sorted(files)
    assert all(is_placeholder(p) for p in cache_entries(tmp_path))
    assert (target / "f1.txt").read_bytes() == files["f1.txt"]
    assert sum(not is_placeholder(p) for p in cache_entries(tmp_path)) == 1

    # The plugin restarts with the pod still running: the new one takes the placeholders
    # over (its store known once it re-adopts the publication) and fills them.
    node.shutdown()
    restarted = service(tmp_path)
    try:
        assert restarted.readopt() == []
        assert (target / "big.bin").read_bytes() == files["big.bin"]
        lazy = restarted.lowers.cache.lazy
        assert lazy is not None and lazy.wait_idle(10)
        assert not any(is_placeholder(p) for p in cache_entries(tmp_path))
        for rel, data in files.items():
            assert (target / rel).read_bytes() == data
    finally:
        restarted.shutdown()
        mounts.unmount_tree(tmp_path / "pods")
        restarted.lowers.cache.close()


def test_lazy_fetch_by_image_mounts_the_tree_at_once_and_a_restarted_plugin_serves_it(
    tmp_path: Path, files: dict[str, bytes]
) -> None:
    assert parser().parse_args(["--lazy-fetch-as", "image"]).lazy_fetch_as == "image"
    node = service(tmp_path, "image")
    assert node.lowers.images is not None and node.lowers.cache.lazy is None
    node.lowers.cache.prefetch = False  # so that what a read fetched shows
    target = publish(node, tmp_path)
    assert sorted(p.name for p in target.iterdir() if p.name != ".kvol") == sorted(files)
    (lower,) = node.lowers.all()
    blob = lower.path / "blob"
    total = node.lowers.images.pending(blob)
    assert total == len(files) and not cache_entries(tmp_path)  # nothing fetched yet
    assert (target / "f1.txt").read_bytes() == files["f1.txt"]
    assert node.lowers.images.pending(blob) == total - 1

    # The plugin restarts with the pod still running: the new one takes the group over,
    # watches the snapshot's blob again and fills it once it knows the volume's store.
    node.shutdown()
    restarted = service(tmp_path, "image")
    try:
        assert restarted.readopt() == []
        assert (target / "big.bin").read_bytes() == files["big.bin"]
        images = restarted.lowers.images
        assert images is not None
        # It goes on with the background fill the previous process left.
        assert images.wait_idle(10) and images.pending(blob) == 0
        for rel, data in files.items():
            assert (target / rel).read_bytes() == data

        # Once no pod uses it and its warm time is over, the snapshot goes, image and all.
        unpublish_pod(restarted, target)
        restarted.tidy(now=time.time() + 10**6)
        assert restarted.lowers.all() == []
        assert mounts_under(tmp_path / "state") == []
    finally:
        restarted.shutdown()
        mounts.unmount_tree(tmp_path / "pods")
        restarted.lowers.close()
        mounts.unmount_tree(tmp_path / "state")
