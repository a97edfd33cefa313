"""Warm nodes: a volume's read-only snapshot outlives its last pod on the node for the
keep-warm time, so the next pod publishes without rebuilding it; the plugin's state keeps
it across restarts, and the janitor drops it when its time ends."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from kvol.catalog import Catalog
from kvol.csi import mounts
from kvol.csi.main import parser
from kvol.csi.node import NodeConfig, NodeService
from kvol.csi.resolver import StaticResolver
from kvol.mounting import overlay_supported
from kvol.repo import Repo
from kvol.store import FilesystemStore, Store
from kvol.workcopy import WorkingCopy
from tests.unit.csi.pods import publish as publish_pod
from tests.unit.csi.pods import unpublish

NAMESPACE = "team-a"


class CountingStore(FilesystemStore):
    """A real filesystem store that counts the objects read from it, by kind."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, durable=False)
        self.reads: list[str] = []
        self._count_lock = threading.Lock()

    def _get(self, key: str) -> bytes:
        with self._count_lock:
            self.reads.append(key)
        return super()._get(key)

    def _get_range(self, key: str, start: int, length: int) -> bytes:
        with self._count_lock:
            self.reads.append(key)
        return super()._get_range(key, start, length)

    def volume_reads(self) -> list[str]:
        """Reads of a volume's history or content (log, checkpoints, blobs, packs): what a
        snapshot build reads, and a publish on a kept snapshot never does."""
        kinds = ("/log/", "/checkpoints/", "/blobs/", "/packs/")
        return [k for k in self.reads if any(kind in k for kind in kinds)]


class CountingResolver(StaticResolver):
    def __init__(self, store: CountingStore) -> None:
        super().__init__(store.url, autocommit_seconds=0)
        self.counting = store

    def store(self, backend: str = "") -> Store:
        return self.counting


@pytest.fixture(autouse=True)
def _root_with_overlay() -> None:
    if not overlay_supported():
        pytest.fail("warm-node tests need root and overlayfs", pytrace=False)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    """A volume of 30 small files and one of 300 KiB."""
    s = CountingStore(tmp_path / "store")
    meta = Catalog.for_namespace(s, NAMESPACE).create("data")
    wc = WorkingCopy.create(Repo(s, meta.id), tmp_path / "seed", tmp_path / "seed-meta")
    for i in range(30):
        (wc.root / f"f{i:02d}.txt").write_text(f"file {i}\n")
    (wc.root / "big.bin").write_bytes(secrets.token_bytes(300 << 10))
    wc.commit()
    wc.close(final_commit=False)
    yield s
    mounts.unmount_tree(tmp_path)


def repo_of(store: Store) -> Repo:
    return Catalog.for_namespace(store, NAMESPACE).repo("data")


def publish(node: NodeService, tmp_path: Path) -> Path:
    return publish_pod(node, tmp_path, NAMESPACE)


def service(tmp_path: Path, store: CountingStore, **config: object) -> NodeService:
    cfg = NodeConfig("node-1", tmp_path / "state", layout="overlay", **config)  # type: ignore[arg-type]
    return NodeService(cfg, CountingResolver(store))


def snapshots(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "state" / "lowers").glob("*/*/index"))


def warm_in_state(tmp_path: Path) -> dict[str, float]:
    warm: dict[str, float] = json.loads((tmp_path / "state" / "state.json").read_text())["warm"]
    return warm


def test_a_pod_after_the_last_one_ended_reuses_the_kept_snapshot(
    tmp_path: Path, store: CountingStore
) -> None:
    node = service(tmp_path, store)  # the default keeps snapshots warm
    seed_objects = {p.obj for r in repo_of(store).state().files.values() for p in r.parts}
    unpublish(node, publish(node, tmp_path))
    kept = snapshots(tmp_path)
    assert len(kept) == 1
    # The pod's copy (upper layer, index) is gone; only the read-only snapshot stays.
    assert not list((tmp_path / "state" / "pubs").iterdir())
    assert mounts.mounts_under(tmp_path / "state") == []

    # The head is what the snapshot has: the next pod reads nothing of the volume.
    store.reads.clear()
    second = publish(node, tmp_path)
    assert store.volume_reads() == []
    assert snapshots(tmp_path) == kept
    assert (second / "f07.txt").read_text() == "file 7\n"
    assert (second / "big.bin").stat().st_size == 300 << 10
    (second / "written.txt").write_text("by the second pod\n")
    unpublish(node, second)
    repo = repo_of(store)
    assert repo.reader().read(repo.state().files["written.txt"]) == b"by the second pod\n"
    assert snapshots(tmp_path) == kept

    # The head moved: the kept snapshot plus the new commit, and nothing the snapshot
    # already has is read again.
    store.reads.clear()
    third = publish(node, tmp_path)
    assert snapshots(tmp_path) == kept
    reads = store.volume_reads()
    assert reads and not [k for k in reads if "/checkpoints/" in k]
    assert not {k.rsplit("/", 1)[-1] for k in reads} & seed_objects
    assert (third / "written.txt").read_text() == "by the second pod\n"
    unpublish(node, third)
    node.shutdown()


def test_a_kept_snapshot_is_dropped_when_its_time_ends(
    tmp_path: Path, store: CountingStore
) -> None:
    node = service(tmp_path, store, keep_warm_seconds=600)
    unpublish(node, publish(node, tmp_path))
    assert len(snapshots(tmp_path)) == 1
    (key,) = warm_in_state(tmp_path)
    node.tidy(now=time.time() + 300)
    assert len(snapshots(tmp_path)) == 1 and key in warm_in_state(tmp_path)
    node.tidy(now=time.time() + 601)
    assert snapshots(tmp_path) == []
    assert warm_in_state(tmp_path) == {}
    assert not [p for p in (tmp_path / "state" / "lowers").rglob("*") if p.is_file()]
    node.shutdown()


def test_the_janitor_drops_expired_snapshots_in_the_background(
    tmp_path: Path, store: CountingStore
) -> None:
    node = service(tmp_path, store, keep_warm_seconds=0.3)
    node.start_janitor()
    try:
        unpublish(node, publish(node, tmp_path))
        assert len(snapshots(tmp_path)) == 1
        deadline = time.monotonic() + 10
        while snapshots(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert snapshots(tmp_path) == []
        assert warm_in_state(tmp_path) == {}
    finally:
        node.shutdown()


def test_no_keep_warm_drops_the_snapshot_with_the_last_pod(
    tmp_path: Path, store: CountingStore
) -> None:
    node = service(tmp_path, store, keep_warm_seconds=0)
    one, two = publish(node, tmp_path), publish(node, tmp_path)
    unpublish(node, one)
    assert len(snapshots(tmp_path)) == 1  # the other pod still uses it
    unpublish(node, two)
    assert snapshots(tmp_path) == []
    assert warm_in_state(tmp_path) == {}
    node.shutdown()


def test_a_restarted_plugin_keeps_warm_snapshots_until_their_time_ends(
    tmp_path: Path, store: CountingStore
) -> None:
    node = service(tmp_path, store, keep_warm_seconds=600)
    unpublish(node, publish(node, tmp_path))
    kept = snapshots(tmp_path)
    node.shutdown()

    restarted = service(tmp_path, store, keep_warm_seconds=600)
    assert restarted.readopt() == []
    assert snapshots(tmp_path) == kept  # not dropped as a leftover
    store.reads.clear()
    pod = publish(restarted, tmp_path)
    assert store.volume_reads() == []
    unpublish(restarted, pod)
    restarted.shutdown()

    # Its time ended while no plugin ran: the next one drops it, and forgets it.
    state = tmp_path / "state" / "state.json"
    data = json.loads(state.read_text())
    data["warm"] = {k: time.time() - 1 for k in data["warm"]}
    state.write_text(json.dumps(data))
    later = service(tmp_path, store, keep_warm_seconds=600)
    assert later.readopt() == []
    assert snapshots(tmp_path) == []
    assert warm_in_state(tmp_path) == {}
    later.shutdown()


def test_a_shorter_keep_warm_time_applies_to_snapshots_already_warm(
    tmp_path: Path, store: CountingStore
) -> None:
    node = service(tmp_path, store, keep_warm_seconds=600)
    unpublish(node, publish(node, tmp_path))
    node.shutdown()
    restarted = service(tmp_path, store, keep_warm_seconds=0)
    restarted.readopt()
    assert snapshots(tmp_path) == []
    restarted.shutdown()


def test_a_newer_snapshot_of_the_volume_replaces_a_warm_one(
    tmp_path: Path, store: CountingStore
) -> None:
    node = service(tmp_path, store)
    unpublish(node, publish(node, tmp_path))
    (old,) = snapshots(tmp_path)
    repo = repo_of(store)
    writer = WorkingCopy.create(repo, tmp_path / "w", tmp_path / "w-meta")
    (writer.root / "new.txt").write_text("new\n")
    writer.commit()
    writer.close(final_commit=False)
    new = node.lowers.build(repo, repo.head())
    node.tidy()  # the old one would never be picked again
    assert snapshots(tmp_path) == [new.index_path]
    assert old.parent != new.path
    node.shutdown()


def sample(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    return 0.0 if value is None else value


def test_a_full_cache_drops_warm_snapshots_and_evicts_their_content(
    tmp_path: Path, store: CountingStore
) -> None:
    node = service(tmp_path, store, cache_max_bytes=100 << 10)
    evictions = sample("kvol_node_cache_evictions_total")
    pod = publish(node, tmp_path)
    node.tidy()  # in use: nothing can go, though the cache is over its limit
    assert len(snapshots(tmp_path)) == 1
    assert sample("kvol_node_cache_bytes") > 300 << 10
    assert sample("kvol_node_cache_limit_bytes") == 100 << 10
    unpublish(node, pod)
    assert len(snapshots(tmp_path)) == 1  # warm
    node.tidy()
    assert snapshots(tmp_path) == []
    assert node.lowers.cache.size <= 100 << 10
    assert sample("kvol_node_cache_bytes") <= 100 << 10
    assert sample("kvol_node_cache_evictions_total") > evictions
    node.shutdown()


def test_the_plugin_takes_sizes_and_times_as_kubernetes_writes_them() -> None:
    args = parser().parse_args(["--cache-max-bytes=10Gi", "--keep-warm-seconds=90"])
    assert (args.cache_max_bytes, args.keep_warm_seconds) == (10 << 30, 90.0)
    assert parser().parse_args(["--cache-max-bytes=1048576"]).cache_max_bytes == 1 << 20
    defaults = parser().parse_args([])
    assert (defaults.cache_max_bytes, defaults.keep_warm_seconds) == (10 << 30, 600.0)
    for wrong in ("--cache-max-bytes=10GB", "--cache-max-bytes=-1", "--keep-warm-seconds=-5"):
        with pytest.raises(SystemExit):
            parser().parse_args([wrong])
