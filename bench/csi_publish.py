"""The node plugin: NodePublishVolume of a warm volume, and the final commit on unpublish.

A real plugin (the Node service behind its gRPC socket, in this process) publishes into
real mounts, as the kubelet asks. Needs root and overlayfs.

* ``csi.publish_warm_1g`` / ``csi.publish_warm_10g``: a pod's publish while another pod of
  the volume runs on the node (its snapshot and the content cache are warm). Target:
  under 0.2 s for both sizes. Baselines: the plain-copy layout's publish of the same
  volume (what a plugin without copy-on-write pays) and ``cp -r`` of the tree.
  Details: the cold publish (first pod: snapshot built, content fetched) and the publish
  after the snapshot was dropped (cache warm: snapshot rebuilt by hard links).
* ``csi.unpublish_final_commit``: unpublish of a pod that wrote 1,000 files of 16 KiB
  and changed 100 more, in the 1 GiB volume. Baselines: the plain layout's unpublish of
  the same change, and ``cp`` of just those files.
* ``csi.publish_after_last_pod``: a pod of a 20,000-file volume that starts after the
  previous pod of the volume on the node ended (batch jobs one after another). Kept warm
  (``--keep-warm-seconds``, the default): its snapshot is still there. Target: under
  0.2 s. Baseline, measured alternately in the same run: the plugin with keep-warm off,
  which rebuilds the snapshot from the content cache.

The store is a filesystem store in the scratch directory with ``fsync=false``: publish
reads one small object from it (the head), and the final commit's cost is the scan and
upload, not the disk's flush.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path

import grpc

from bench import baselines
from bench.harness import Context, Measurement, Result, Scenario, Target, timed
from bench.tree import write_small_files
from kvol.catalog import Catalog
from kvol.csi.identity import IdentityService
from kvol.csi.node import NodeConfig, NodeService
from kvol.csi.proto import csi_pb2, csi_pb2_grpc
from kvol.csi.resolver import StaticResolver
from kvol.csi.server import build_server
from kvol.mounting import mounts_under, overlay_supported, umount
from kvol.store import open_store
from kvol.workcopy import WorkingCopy

NAMESPACE = "bench"
PUBLISH_TARGET = 0.2
WARM_RUNS = 7


class Node:
    """A plugin (Node service on a socket) and a kubelet that publishes pods into it."""

    def __init__(self, root: Path, store_url: str, layout: str, keep_warm: float = 0) -> None:
        self.root = root
        self.service = NodeService(
            NodeConfig(
                node_id="bench",
                state_dir=root / "state",
                layout=layout,
                keep_warm_seconds=keep_warm,
            ),
            StaticResolver(store_url, autocommit_seconds=0),
        )
        sock = root / "csi.sock"
        self.server = build_server(
            f"unix://{sock}",
            {"Identity": IdentityService(), "Node": self.service},
            driver_name="csi.kvol.dev",
        )
        self.channel = grpc.insecure_channel(f"unix://{sock}")
        self.stub = csi_pb2_grpc.NodeStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(None)
        self.service.shutdown()
        for point in mounts_under(self.root):
            with contextlib.suppress(OSError):
                umount(point, 2)

    def pod(self) -> tuple[str, Path]:
        uid = secrets.token_hex(8)
        target = self.root / "pods" / uid / "volumes" / "kubernetes.io~csi" / "data" / "mount"
        target.parent.mkdir(parents=True)
        return f"csi-{uid}", target

    def publish(self, volume_id: str, target: Path) -> None:
        self.stub.NodePublishVolume(
            csi_pb2.NodePublishVolumeRequest(
                volume_id=volume_id,
                target_path=str(target),
                volume_capability=csi_pb2.VolumeCapability(
                    mount=csi_pb2.VolumeCapability.MountVolume(),
                    access_mode=csi_pb2.VolumeCapability.AccessMode(
                        mode=csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER
                    ),
                ),
                volume_context={
                    "volume": "data",
                    "csi.storage.k8s.io/pod.namespace": NAMESPACE,
                    "autocommitIntervalSeconds": "0",
                },
            ),
            timeout=3600,
        )

    def unpublish(self, volume_id: str, target: Path) -> None:
        self.stub.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target)),
            timeout=3600,
        )


@contextlib.contextmanager
def node(root: Path, store_url: str, layout: str, keep_warm: float = 0) -> Iterator[Node]:
    root.mkdir(parents=True, exist_ok=True)
    n = Node(root, store_url, layout, keep_warm)
    try:
        yield n
    finally:
        n.close()


def seed(ctx: Context, store_url: str, files: int, total: int) -> Path:
    """A volume ``data`` of ``files`` files adding up to ``total`` bytes; returns its tree."""
    store = open_store(store_url)
    catalog = Catalog.for_namespace(store, NAMESPACE)
    catalog.create("data")
    repo = catalog.repo("data")
    tree = ctx.workdir / "seed"
    wc = WorkingCopy.create(repo, tree, ctx.workdir / "seed-meta")
    ctx.log(f"writing and committing a volume of {files} files, {total >> 20} MiB")
    write_small_files(tree, files, total // files)
    wc.commit()
    wc.close(final_commit=False)
    baselines.drop_dirty_pages()
    return tree


def publish_scenario(label: str, full: tuple[int, int], quick: tuple[int, int]) -> Scenario:
    def run(ctx: Context) -> list[Result]:
        files, total = quick if ctx.quick else full
        store_url = f"file://{ctx.workdir / 'store'}?fsync=false"
        tree = seed(ctx, store_url, files, total)

        with node(ctx.workdir / "node", store_url, "overlay") as n:
            first = n.pod()
            cold = timed(lambda: n.publish(*first))
            warm_runs = []
            for _ in range(WARM_RUNS):
                pod = n.pod()
                warm_runs.append(timed(lambda pod=pod: n.publish(*pod)))  # type: ignore[misc]
                n.unpublish(*pod)
            warm = statistics.median(warm_runs)
            n.unpublish(*first)  # the last mount goes: its snapshot is dropped
            again = n.pod()
            rebuilt = timed(lambda: n.publish(*again))
            n.unpublish(*again)
        baselines.drop_dirty_pages()

        with node(ctx.workdir / "plain", store_url, "plain") as p:
            pod = p.pod()
            plain = timed(lambda: p.publish(*pod))
            p.unpublish(*pod)
        baselines.drop_dirty_pages()
        cp = baselines.cp_tree(tree, ctx.workdir / "cp")
        shutil.rmtree(ctx.workdir / "cp")
        return [
            Result(
                f"csi.publish_warm_{label}",
                warm,
                Measurement("NodePublishVolume, plain-copy layout", plain),
                target=Target(
                    "seconds_at_most",
                    PUBLISH_TARGET,
                    f"a warm publish under {PUBLISH_TARGET}s whatever the volume's size",
                ),
                params={"files": files, "bytes": total, "warm_runs": WARM_RUNS},
                other_baselines=[Measurement("cp -r", cp)],
                details={
                    "cold_publish_seconds": cold,
                    "snapshot_dropped_cache_warm_seconds": rebuilt,
                    "warm_min_seconds": min(warm_runs),
                    "warm_max_seconds": max(warm_runs),
                },
            )
        ]

    return Scenario(
        f"csi.publish_warm_{label}",
        run,
        per_store=False,
        description=f"NodePublishVolume of a warm {label} volume (overlay) vs a plain copy",
    )


CHANGED_NEW = 1000
CHANGED_MODIFIED = 100
CHANGED_SIZE = 16 * 1024


def final_commit(ctx: Context) -> list[Result]:
    files, total = (200, 8 << 20) if ctx.quick else (10_000, 1 << 30)
    new, modified = (50, 10) if ctx.quick else (CHANGED_NEW, CHANGED_MODIFIED)
    store_url = f"file://{ctx.workdir / 'store'}?fsync=false"
    seed(ctx, store_url, files, total)
    timings: dict[str, float] = {}
    changed: list[str] = []
    for layout in ("overlay", "plain"):
        with node(ctx.workdir / layout, store_url, layout) as n:
            pod = n.pod()
            n.publish(*pod)
            target = pod[1]
            changed = [f"new/{r}" for r in write_small_files(target / "new", new, CHANGED_SIZE)]
            for i in range(modified):
                rel = f"d{i // 1000:04d}/f{i:07d}"
                (target / rel).write_bytes(os.urandom(CHANGED_SIZE))
                changed.append(rel)
            baselines.drop_dirty_pages()
            timings[layout] = timed(lambda n=n, pod=pod: n.unpublish(*pod))  # type: ignore[misc]
    source = ctx.workdir / "changed-src"
    write_small_files(source / "new", new, CHANGED_SIZE)
    for i in range(modified):
        rel = source / f"d{i // 1000:04d}/f{i:07d}"
        rel.parent.mkdir(parents=True, exist_ok=True)
        rel.write_bytes(os.urandom(CHANGED_SIZE))
    baselines.drop_dirty_pages()
    cp = baselines.cp_files(source, changed, ctx.workdir / "cp-changed")
    return [
        Result(
            "csi.unpublish_final_commit",
            timings["overlay"],
            Measurement("NodeUnpublishVolume, plain-copy layout", timings["plain"]),
            params={
                "volume_files": files,
                "volume_bytes": total,
                "new_files": new,
                "modified_files": modified,
                "file_size": CHANGED_SIZE,
            },
            other_baselines=[Measurement("cp of the changed files", cp)],
        )
    ]


def _needs_root(ctx: Context) -> None:
    if not overlay_supported():
        raise RuntimeError("the CSI benchmarks need root and overlayfs")


def _guarded(scenario: Scenario) -> Scenario:
    def run(ctx: Context) -> list[Result]:
        _needs_root(ctx)
        result = scenario.run(ctx)
        assert isinstance(result, list)
        return result  # type: ignore[return-value]

    return Scenario(scenario.name, run, scenario.per_store, scenario.description)


AFTER_LAST_POD_RUNS = 7
KEEP_WARM = 600.0


def after_last_pod(ctx: Context) -> list[Result]:
    files, size = (500, 4096) if ctx.quick else (20_000, 4096)
    store_url = f"file://{ctx.workdir / 'store'}?fsync=false"
    seed(ctx, store_url, files, files * size)
    with (
        node(ctx.workdir / "cold", store_url, "overlay", keep_warm=0) as cold,
        node(ctx.workdir / "warm", store_url, "overlay", keep_warm=KEEP_WARM) as warm,
    ):
        # The first pod on each node: snapshot built, content fetched into the cache.
        first = {}
        for label, n in (("cold", cold), ("warm", warm)):
            pod = n.pod()
            first[label] = timed(lambda n=n, pod=pod: n.publish(*pod))  # type: ignore[misc]
            n.unpublish(*pod)
        baselines.drop_dirty_pages()
        timings: dict[str, list[float]] = {"cold": [], "warm": []}
        for _ in range(1 if ctx.quick else AFTER_LAST_POD_RUNS):
            for label, n in (("cold", cold), ("warm", warm)):  # alternating
                pod = n.pod()
                timings[label].append(timed(lambda n=n, pod=pod: n.publish(*pod)))  # type: ignore[misc]
                n.unpublish(*pod)  # the pod ends before the next one starts
        kept = len(list((ctx.workdir / "warm" / "state" / "lowers").glob("*/*/index")))
    warm_s, cold_s = statistics.median(timings["warm"]), statistics.median(timings["cold"])
    return [
        Result(
            "csi.publish_after_last_pod",
            warm_s,
            Measurement("NodePublishVolume with keep-warm off (snapshot rebuilt)", cold_s),
            target=Target(
                "seconds_at_most",
                PUBLISH_TARGET,
                f"a kept-warm publish under {PUBLISH_TARGET}s",
            ),
            params={
                "files": files,
                "file_size": size,
                "runs": len(timings["warm"]),
                "keep_warm_seconds": KEEP_WARM,
            },
            details={
                "warm_runs_seconds": timings["warm"],
                "cold_runs_seconds": timings["cold"],
                "first_publish_empty_cache_seconds": first,
                "snapshots_kept_warm": kept,
            },
        )
    ]


SCENARIOS = [
    _guarded(publish_scenario("1g", (10_000, 1 << 30), (200, 8 << 20))),
    _guarded(publish_scenario("10g", (10_000, 10 << 30), (200, 80 << 20))),
    _guarded(
        Scenario(
            "csi.unpublish_final_commit",
            final_commit,
            per_store=False,
            description="final commit on NodeUnpublishVolume of 1,100 changed files",
        )
    ),
    _guarded(
        Scenario(
            "csi.publish_after_last_pod",
            after_last_pod,
            per_store=False,
            description="publish of a 20,000-file volume after its last pod ended: "
            "kept warm vs rebuilt",
        )
    ),
]
