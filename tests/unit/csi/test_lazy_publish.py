"""A plugin started with --lazy-fetch publishes before the volume's content is on the node,
and a restarted plugin fills what the previous one left (root: overlayfs and fanotify)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.csi import mounts
from kvol.csi.main import parser
from kvol.csi.node import NodeConfig, NodeService
from kvol.csi.resolver import StaticResolver
from kvol.lazy import is_placeholder
from kvol.mounting import overlay_supported
from kvol.repo import Repo
from kvol.store import FilesystemStore
from kvol.workcopy import WorkingCopy
from tests.unit.csi.pods import publish as publish_pod

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


def service(tmp_path: Path) -> NodeService:
    config = NodeConfig("node-1", tmp_path / "state", layout="overlay", lazy_fetch=True)
    return NodeService(config, StaticResolver(f"file://{tmp_path / 'store'}", 0))


def cache_entries(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "state" / "cache").glob("??/*") if p.is_file()]


def test_lazy_fetch_flag_publishes_first_and_a_restarted_plugin_fills_the_rest(
    tmp_path: Path, files: dict[str, bytes]
) -> None:
    assert parser().parse_args(["--lazy-fetch"]).lazy_fetch
    assert not parser().parse_args([]).lazy_fetch

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
