"""Pod create → Running on a real one-node cluster: a kvol volume against an emptyDir.

The cluster is the e2e tier's (``hack/cluster-up.sh``, kvol installed from its chart and
image with the store on a directory of the node, see ``tests/e2e/cluster.py``): brought up
if it is not running, and stopped again afterwards only if this benchmark started it.

* ``pod.start_files_cold`` / ``pod.start_large_cold``: a pod mounting a volume of 2,000
  small files (or of one 1 GiB file) on a node that has no snapshot of it and nothing of
  it in its content cache: the plugin builds the snapshot from the store.
* ``pod.start_files_warm`` / ``pod.start_large_warm``: the same while another pod of the
  volume runs on the node, so its snapshot is there.

What is timed: from running ``kubectl apply`` of the pod until a watch of the namespace
sees it Running (median of several). Baseline: the same pod with an emptyDir, measured in
alternation with it. The kubelet notices started containers once a second (PLEG relist),
so both are quantized to about a second; the kubelet's own "MountVolume started" to
"SetUp succeeded" times, read from its log, go into ``details`` as the finer measure of the
volume's share.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.harness import Context, Measurement, Result, Scenario
from tests.e2e.cluster import (
    BUSYBOX,
    CLUSTER_DIR,
    CLUSTER_RUN,
    Cluster,
    pod,
    run_script,
    unique,
)

#: Where the plugin keeps snapshots and its content cache (the e2e install's node.stateDir).
STATE_DIR = CLUSTER_DIR / "kvol-state"
KUBELET_LOG = CLUSTER_RUN / "logs" / "kubelet.log"
SLEEPER = "trap 'exit 0' TERM; sleep 3600 & wait"


@contextmanager
def e2e_cluster(ctx: Context) -> Iterator[Cluster]:
    """The e2e cluster with kvol installed; stopped afterwards if it was not running."""
    kubectl = CLUSTER_DIR / "bin" / "kubectl"
    was_up = (
        kubectl.exists()
        and subprocess.run(
            [str(kubectl), "get", "--raw", "/readyz"], capture_output=True, timeout=30
        ).returncode
        == 0
    )
    try:
        ctx.log(run_script("cluster-up.sh"))
        ctx.log(run_script("build-image.sh", "kvol"))
        cluster = Cluster()
        cluster.install("filesystem")
        yield cluster
    finally:
        if not was_up:
            ctx.log(run_script("cluster-down.sh"))


class PodWatch:
    """``kubectl get pods -w`` of one namespace: when each pod was first seen in a phase."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        # A pod that never runs (no node matches it) makes the watch's first line: once it
        # is printed, the watch is established and no later change can be missed.
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "sentinel"},
                "spec": {
                    "nodeSelector": {"kvol.dev/bench": "nowhere"},
                    "containers": [{"name": "main", "image": BUSYBOX}],
                },
            },
            namespace=namespace,
        )
        self.seen: dict[tuple[str, str], float] = {}
        self._cond = threading.Condition()
        self._proc = subprocess.Popen(
            [
                str(cluster.kubectl_binary),
                "get",
                "pods",
                "-n",
                namespace,
                "--watch",
                "-o",
                "jsonpath={.metadata.name} {.status.phase}{'\\n'}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait("sentinel", "Pending", since=0.0, timeout=60)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            now = time.monotonic()
            name, _, phase = line.strip().partition(" ")
            with self._cond:
                self.seen.setdefault((name, phase), now)
                self._cond.notify_all()

    def forget(self, name: str) -> None:
        with self._cond:
            for key in [k for k in self.seen if k[0] == name]:
                del self.seen[key]

    def wait(self, name: str, phase: str, since: float, timeout: float = 600) -> float:
        """When ``name`` was first seen in ``phase`` (after ``since``)."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self.seen.get((name, phase), -1.0) >= since, timeout=timeout
            )
            if not ok:
                raise TimeoutError(f"pod {name} not {phase} after {timeout:.0f}s")
            return self.seen[(name, phase)]

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


def _pod(name: str, vol: str | None) -> dict[str, Any]:
    """The pod under test: busybox sleeping, its volume at /data (kvol inline, or emptyDir)."""
    if vol is not None:
        spec = pod(name, SLEEPER, inline=vol, grace=1)
    else:
        spec = pod(name, SLEEPER, inline="x", grace=1)
        spec["spec"]["volumes"] = [{"name": "vol", "emptyDir": {}}]
    return spec


def _start(cluster: Cluster, watch: PodWatch, namespace: str, spec: dict[str, Any]) -> float:
    """Seconds from ``kubectl apply`` of ``spec`` until the watch sees it Running."""
    name = spec["metadata"]["name"]
    watch.forget(name)
    started = time.monotonic()
    cluster.apply(spec, namespace=namespace)
    return watch.wait(name, "Running", since=started) - started


def _drop_node_copies() -> None:
    """Make the node cold for the next pod: no snapshot (the plugin drops one with the last
    pod using it, as it finishes unpublishing) and an empty content cache, as on a node that
    never had the volume. Only while no pod mounts a kvol volume, so nothing links from the
    cache meanwhile."""
    lowers = STATE_DIR / "lowers"
    deadline = time.monotonic() + 60
    while True:
        left = [p for p in lowers.glob("*/*") if not p.name.startswith(".")]
        if not left:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"snapshots still on the node, it is not cold: {left}")
        time.sleep(0.2)
    cache = STATE_DIR / "cache"
    if cache.exists():
        for entry in cache.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


_KLOG = re.compile(r"^I(\d{4}) (\d\d:\d\d:\d\d\.\d+)\s")
_MOUNT = re.compile(
    r'"(operationExecutor\.MountVolume started|MountVolume\.SetUp succeeded) for volume \\"vol\\".*pod="([^"]+)"'
)


def volume_setup_seconds(log: Path, since_offset: int) -> dict[str, float]:
    """Per pod ("ns/name"): seconds the kubelet took to set up its volume "vol", from its
    log written after ``since_offset``."""
    started: dict[str, datetime] = {}
    took: dict[str, float] = {}
    with open(log, encoding="utf-8", errors="replace") as f:
        f.seek(since_offset)
        for line in f:
            match, stamp = _MOUNT.search(line), _KLOG.match(line)
            if not match or not stamp:
                continue
            at = datetime.strptime(f"{stamp.group(1)} {stamp.group(2)}", "%m%d %H:%M:%S.%f")
            what, who = match.groups()
            if what.startswith("operationExecutor"):
                started.setdefault(who, at)
            elif who in started and who not in took:
                took[who] = (at - started[who]).total_seconds()
    return took


def _seed(cluster: Cluster, namespace: str, vol: str, script: str) -> float:
    """Fill ``vol`` from a pod that writes and exits (its final commit carries it all)."""
    started = time.monotonic()
    name = unique("seed")
    cluster.apply(pod(name, script, inline=vol), namespace=namespace)
    cluster.wait_pod_phase(namespace, name, ("Succeeded",), timeout=900)
    cluster.delete_pod(namespace, name, timeout=900)
    return time.monotonic() - started


def pod_start(ctx: Context) -> list[Result]:
    repeats = 2 if ctx.quick else 5
    files, file_size = (200, 1024) if ctx.quick else (2000, 1024)
    large = (32 << 20) if ctx.quick else (1 << 30)
    results: list[Result] = []
    with e2e_cluster(ctx) as cluster:
        namespace = unique("bench")
        cluster.kubectl("create", "namespace", namespace)
        watch = PodWatch(cluster, namespace)
        try:
            volumes = {
                "files": (
                    f"i=0; while [ $i -lt {files} ]; do "
                    f"head -c {file_size} /dev/urandom > /data/f$i; i=$((i+1)); done",
                    {"files": files, "file_bytes": file_size},
                ),
                "large": (
                    f"head -c {large} /dev/urandom > /data/big",
                    {"files": 1, "file_bytes": large},
                ),
            }
            for kind, (script, params) in volumes.items():
                vol = unique(kind)
                cluster.create_volume(namespace, vol)
                seeded = _seed(cluster, namespace, vol, script)
                ctx.log(f"pod.start: volume {vol} seeded in {seeded:.1f}s")
                for node in ("cold", "warm"):
                    results.append(
                        _measure(ctx, cluster, watch, namespace, vol, kind, node, repeats, params)
                    )
        finally:
            watch.close()
            cluster.kubectl(
                "delete",
                "pods",
                "--all",
                "-n",
                namespace,
                "--wait=true",
                "--timeout=300s",
                check=False,
                timeout=360,
            )
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    return results


def _measure(
    ctx: Context,
    cluster: Cluster,
    watch: PodWatch,
    namespace: str,
    vol: str,
    kind: str,
    node: str,
    repeats: int,
    params: dict[str, int],
) -> Result:
    holder = None
    if node == "warm":
        holder = unique("holder")
        cluster.apply(_pod(holder, vol), namespace=namespace)
        cluster.wait_pod_phase(namespace, holder, ("Running",), timeout=600)
    log_offset = KUBELET_LOG.stat().st_size
    kvol_times: list[float] = []
    empty_times: list[float] = []
    kvol_pods: list[str] = []
    empty_pods: list[str] = []
    for _ in range(repeats):
        if node == "cold":
            _drop_node_copies()
        # Alternating, so drift on the machine weighs on both alike.
        for times, names, spec in (
            (kvol_times, kvol_pods, _pod(unique("kvol"), vol)),
            (empty_times, empty_pods, _pod(unique("empty"), None)),
        ):
            name = spec["metadata"]["name"]
            times.append(_start(cluster, watch, namespace, spec))
            names.append(f"{namespace}/{name}")
            cluster.delete_pod(namespace, name)
    if holder is not None:
        cluster.delete_pod(namespace, holder)
    setup = volume_setup_seconds(KUBELET_LOG, log_offset)
    kvol_setup = [setup[p] for p in kvol_pods if p in setup]
    empty_setup = [setup[p] for p in empty_pods if p in setup]
    kvol_median = statistics.median(kvol_times)
    empty_median = statistics.median(empty_times)
    ctx.log(
        f"pod.start_{kind}_{node}: kvol {kvol_times}, emptyDir {empty_times}; "
        f"volume setup kvol {kvol_setup}, emptyDir {empty_setup}"
    )
    return Result(
        f"pod.start_{kind}_{node}",
        kvol_median,
        Measurement("the same pod with an emptyDir", empty_median),
        params={**params, "node": node, "repeats": repeats},
        details={
            "kvol_over_emptydir": kvol_median / empty_median if empty_median else None,
            "kvol_seconds_each": [round(t, 3) for t in kvol_times],
            "emptydir_seconds_each": [round(t, 3) for t in empty_times],
            "volume_setup_kvol_median": statistics.median(kvol_setup) if kvol_setup else None,
            "volume_setup_emptydir_median": statistics.median(empty_setup) if empty_setup else None,
        },
    )


SCENARIOS = [
    Scenario(
        "pod.start",
        pod_start,
        per_store=False,
        description="pod create to Running with a kvol volume vs an emptyDir (e2e cluster)",
    )
]
