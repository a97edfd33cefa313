"""The operator on a real kube-apiserver: apply-to-Ready latency, and memory at scale.

etcd and kube-apiserver run on loopback (hack/install-etcd.sh, hack/install-kube.sh), the
operator as its own process (``kvol-operator run``), the default backend a directory in
the scratch directory.

* ``operator.apply_to_ready``: time from running ``kubectl apply`` of one Volume until a
  watch sees it Ready (median of several). Baseline: ``kubectl apply`` of a ConfigMap
  until the watch sees it: what kubectl and the API server cost before any operator
  works. Target: under 1 s.
* ``operator.memory_1000``: 1,000 Volumes applied at once: time until every one is
  Ready, and the operator's resident memory before, when all are Ready, and after some
  periodic status passes. Baseline: the same 1,000 objects as ConfigMaps (the API
  server's share of the time).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from bench.harness import Context, Measurement, Result, Scenario, Target
from tests.integration.operator.cluster import (
    Cluster,
    Operator,
    install_crds,
    start_control_plane,
    wait_for,
)
from tests.tools import BIN

READY_TARGET = 1.0
MIB = 1 << 20


def _tool(name: str, script: str) -> str:
    path = BIN / name
    if not path.exists():
        raise RuntimeError(f"{name} is missing: run hack/{script}")
    return str(path)


class Watch:
    """Objects of one kind in a namespace, as a watch delivers them, with arrival times."""

    def __init__(self, cluster: Cluster, namespace: str, kind: str) -> None:
        import kubernetes

        self.seen: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self._stop = threading.Event()
        self._cond = threading.Condition()
        if kind == "Volume":
            api = kubernetes.client.CustomObjectsApi(cluster.api)
            self._list: Callable[..., Any] = api.list_namespaced_custom_object
            self._args: tuple[Any, ...] = ("kvol.dev", "v1alpha1", namespace, "volumes")
        else:
            api = kubernetes.client.CoreV1Api(cluster.api)
            self._list = api.list_namespaced_config_map
            self._args = (namespace,)
        self._watch = kubernetes.watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(0.3)  # let the watch connect before anything is applied

    def _run(self) -> None:
        import kubernetes

        while not self._stop.is_set():
            try:
                for event in self._watch.stream(self._list, *self._args, timeout_seconds=3600):
                    self._note(event["object"])
                    if self._stop.is_set():
                        return
            except Exception:
                # A watch cache still catching up (a new CRD) refuses for a moment; a
                # connection closed by close() ends the loop.
                if self._stop.is_set():
                    return
                time.sleep(0.1)
                self._watch = kubernetes.watch.Watch()

    def _note(self, obj: Any) -> None:
        meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata
        name = meta["name"] if isinstance(meta, dict) else meta.name
        now = time.perf_counter()
        with self._cond:
            self.seen.setdefault(name, now)
            status = obj.get("status") if isinstance(obj, dict) else None
            if status and status.get("phase") == "Ready":
                self.ready.setdefault(name, now)
            self._cond.notify_all()

    def wait(self, names: set[str], ready: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not names <= set(self.ready if ready else self.seen):
                left = deadline - time.monotonic()
                if left <= 0:
                    got = len(names & set(self.ready if ready else self.seen))
                    raise TimeoutError(f"{got}/{len(names)} objects after {timeout}s")
                self._cond.wait(min(left, 1.0))

    def close(self) -> None:
        self._stop.set()
        self._watch.stop()


def _volume(name: str) -> str:
    return f"apiVersion: kvol.dev/v1alpha1\nkind: Volume\nmetadata: {{name: {name}}}\nspec: {{}}\n"


def _configmap(name: str) -> str:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{a: b}}\n"


def _setup(ctx: Context, stack: ExitStack, status_interval: float) -> tuple[Cluster, Operator]:
    cluster = stack.enter_context(
        start_control_plane(
            _tool("etcd", "install-etcd.sh"),
            _tool("kube-apiserver", "install-kube.sh"),
            _tool("kubectl", "install-kube.sh"),
            ctx.workdir / "kube",
        )
    )
    install_crds(cluster)
    cluster.kubectl("create", "namespace", "kvol-system")
    cluster.kubectl("create", "namespace", "bench")
    store = ctx.workdir / "store"
    store.mkdir()
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "kvol.dev/v1alpha1",
                "kind": "VolumeBackend",
                "metadata": {"name": "local"},
                "spec": {"type": "filesystem", "default": True, "filesystem": {"path": str(store)}},
            }
        ),
    )
    operator = Operator(cluster, ctx.workdir / "operator", status_interval=status_interval)
    operator.start()
    stack.callback(operator.stop)
    return cluster, operator


def _apply_and_wait(
    cluster: Cluster, watch: Watch, text: str, names: set[str], ready: bool, timeout: float
) -> float:
    started = time.perf_counter()
    cluster.kubectl("apply", "-n", "bench", "-f", "-", input=text, timeout=timeout)
    watch.wait(names, ready, timeout)
    table = watch.ready if ready else watch.seen
    return max(table[n] for n in names) - started


def apply_to_ready(ctx: Context) -> Result:
    runs = 5 if ctx.quick else 21
    with ExitStack() as stack:
        cluster, _ = _setup(ctx, stack, status_interval=10)
        volumes = Watch(cluster, "bench", "Volume")
        stack.callback(volumes.close)
        maps = Watch(cluster, "bench", "ConfigMap")
        stack.callback(maps.close)
        kvol, base = [], []
        for i in range(runs):
            # Alternate which goes first, so neither always meets a warmer kubectl.
            def volume(i: int = i) -> None:
                kvol.append(
                    _apply_and_wait(cluster, volumes, _volume(f"v{i}"), {f"v{i}"}, True, 30)
                )

            def configmap(i: int = i) -> None:
                base.append(
                    _apply_and_wait(cluster, maps, _configmap(f"c{i}"), {f"c{i}"}, False, 30)
                )

            for step in (volume, configmap) if i % 2 else (configmap, volume):
                step()
            ctx.log(f"apply to Ready {kvol[-1]:.3f}s (ConfigMap seen {base[-1]:.3f}s)")
    ordered = sorted(kvol)
    return Result(
        "operator.apply_to_ready",
        statistics.median(kvol),
        Measurement("kubectl apply of a ConfigMap until a watch sees it", statistics.median(base)),
        target=Target("seconds_at_most", READY_TARGET, "a Volume is Ready under 1 s after apply"),
        params={"runs": runs},
        details={
            "p95_seconds": ordered[max(0, int(len(ordered) * 0.95) - 1)],
            "max_seconds": ordered[-1],
            "min_seconds": ordered[0],
        },
    )


def memory_1000(ctx: Context) -> Result:
    count = 100 if ctx.quick else 1000
    interval = 10.0
    with ExitStack() as stack:
        cluster, operator = _setup(ctx, stack, status_interval=interval)
        time.sleep(2)
        rss_idle = operator.rss_bytes()
        maps = Watch(cluster, "bench", "ConfigMap")
        stack.callback(maps.close)
        volumes = Watch(cluster, "bench", "Volume")
        stack.callback(volumes.close)
        base = _apply_and_wait(
            cluster,
            maps,
            "---\n".join(_configmap(f"c{i}") for i in range(count)),
            {f"c{i}" for i in range(count)},
            False,
            600,
        )
        ctx.log(f"{count} ConfigMaps seen in {base:.1f}s")
        seconds = _apply_and_wait(
            cluster,
            volumes,
            "---\n".join(_volume(f"v{i}") for i in range(count)),
            {f"v{i}" for i in range(count)},
            True,
            1200,
        )
        rss_ready = operator.rss_bytes()
        ctx.log(f"{count} Volumes Ready in {seconds:.1f}s; operator RSS {rss_ready / MIB:.0f} MiB")
        # Let every object's periodic pass run a few times.
        samples = []
        for _ in range(3):
            time.sleep(interval)
            samples.append(operator.rss_bytes())
        metrics = operator.metrics()
        status_runs = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('kvol_operator_reconciles_total{handler="status",kind="Volume"')
        )
        not_ready = wait_for(
            lambda: len(cluster.get_json("volumes", "-n", "bench")["items"]) == count,
            30,
            "all volumes listed",
        )
        assert not_ready
    return Result(
        f"operator.memory_{count}",
        seconds,
        Measurement(f"kubectl apply of {count} ConfigMaps until a watch sees them all", base),
        params={"volumes": count, "status_interval_seconds": interval},
        details={
            "rss_idle_mib": rss_idle / MIB,
            "rss_all_ready_mib": rss_ready / MIB,
            "rss_after_status_passes_mib": max(samples) / MIB,
            "rss_per_volume_kib": (max(samples) - rss_idle) / count / 1024,
            "status_passes_run": status_runs,
        },
    )


SCENARIOS = [
    Scenario(
        "operator.apply_to_ready",
        apply_to_ready,
        per_store=False,
        description="kubectl apply of a Volume until it is Ready",
    ),
    Scenario(
        "operator.memory_1000",
        memory_1000,
        per_store=False,
        description="operator memory and time to Ready with 1,000 Volumes",
    ),
]
