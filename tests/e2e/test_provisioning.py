"""Claims of the kvol StorageClass, as StatefulSets and charts ask for storage, and the
Volume fields that reach the pods' working copies."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.cluster import BUSYBOX, Cluster, pod, unique, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

#: The chart's StorageClass (values storageClass.name).
STORAGE_CLASS = "kvol"


def claim(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "storageClassName": STORAGE_CLASS,
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }


def _bound(cluster: Cluster, namespace: str, name: str) -> str:
    """The name of the PV bound to claim ``name``, once it is bound."""

    def check() -> str | None:
        obj = cluster.get("pvc", name, namespace)
        if obj is None or obj.get("status", {}).get("phase") != "Bound":
            return None
        return str(obj["spec"]["volumeName"])

    return wait_for(check, 120, f"claim {namespace}/{name} to be bound")


def _ready(cluster: Cluster, namespace: str, name: str) -> None:
    wait_for(
        lambda: cluster.volume_phase(namespace, name) == "Ready", 120, f"Volume {name} to be Ready"
    )


def _gone(cluster: Cluster, kind: str, name: str, namespace: str | None = None) -> None:
    wait_for(lambda: cluster.get(kind, name, namespace) is None, 180, f"{kind} {name} to go")


def _read(cluster: Cluster, namespace: str, vol: str, script: str) -> str:
    name = unique("reader")
    cluster.apply(pod(name, script, inline=vol), namespace=namespace)
    cluster.wait_pod_phase(namespace, name, ("Succeeded",))
    out = cluster.logs(namespace, name)
    cluster.delete_pod(namespace, name)
    return out


def test_statefulset_replicas_get_a_volume_each_from_the_storage_class(
    cluster: Cluster, namespace: str
) -> None:
    name = unique("sts")
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [
                        {
                            "name": "main",
                            "image": BUSYBOX,
                            "imagePullPolicy": "Never",
                            "command": [
                                "sh",
                                "-c",
                                "echo $HOSTNAME > /data/who.txt; trap 'exit 0' TERM; "
                                "sleep 3600 & wait",
                            ],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }
                    ],
                },
            },
            "volumeClaimTemplates": [
                {"metadata": {"name": "data"}, "spec": claim("data")["spec"]},
            ],
        },
    }
    cluster.apply(statefulset, namespace=namespace)
    claims = [f"data-{name}-{i}" for i in range(2)]
    for c in claims:
        _bound(cluster, namespace, c)
        # The operator made a Volume named like the claim, and made it Ready.
        _ready(cluster, namespace, c)
    for i in range(2):
        cluster.wait_pod_phase(namespace, f"{name}-{i}", ("Running",), timeout=180)
    cluster.kubectl("scale", "statefulset", name, "-n", namespace, "--replicas=0")
    for i in range(2):
        _gone(cluster, "pod", f"{name}-{i}", namespace)
    # Each replica's file landed in its own Volume.
    for i, c in enumerate(claims):
        assert _read(cluster, namespace, c, "cat /data/who.txt").strip() == f"{name}-{i}"


def test_a_claim_deleted_under_delete_removes_its_volume(cluster: Cluster, namespace: str) -> None:
    name = unique("claim")
    cluster.apply(claim(name), namespace=namespace)
    pv = _bound(cluster, namespace, name)
    cluster.apply(pod("writer", "echo kept > /data/f.txt", claim=name), namespace=namespace)
    cluster.wait_pod_phase(namespace, "writer", ("Succeeded",))
    cluster.delete_pod(namespace, "writer")
    assert cluster.get("volumes.kvol.dev", name, namespace) is not None
    cluster.kubectl("delete", "pvc", name, "-n", namespace, "--wait=false")
    # The class's reclaimPolicy is Delete: the Volume and the PV go with the claim.
    _gone(cluster, "volumes.kvol.dev", name, namespace)
    _gone(cluster, "pv", pv)
    # A new Volume of that name starts empty: the data went with the claim.
    cluster.create_volume(namespace, name)
    assert _read(cluster, namespace, name, "ls /data | wc -l").strip() == "0"


def test_the_volumes_autocommit_interval_reaches_its_pods(cluster: Cluster, namespace: str) -> None:
    # The node's default interval (the e2e install's 2 s) must not apply: with 0 the
    # running pod's change stays uncommitted; with 1 s it lands while the pod runs.
    off, on = unique("off"), unique("on")
    cluster.create_volume(namespace, off, autocommitIntervalSeconds=0)
    cluster.create_volume(namespace, on, autocommitIntervalSeconds=1)
    script = "echo written > /data/f.txt; trap 'exit 0' TERM; sleep 3600 & wait"
    cluster.apply(
        pod("writer-off", script, inline=off),
        pod("writer-on", script, inline=on),
        namespace=namespace,
    )
    for name in ("writer-off", "writer-on"):
        cluster.wait_pod_phase(namespace, name, ("Running",))

    def landed(vol: str) -> bool:
        return _read(cluster, namespace, vol, "cat /data/f.txt 2>/dev/null; true").strip() == (
            "written"
        )

    wait_for(lambda: landed(on) or None, 60, "the background commit of interval 1 s")
    # Well past the node's default interval, and the pod still runs: nothing committed.
    assert not landed(off)
    cluster.delete_pod(namespace, "writer-off")
    assert landed(off), "the final commit still runs with autocommit off"
    cluster.delete_pod(namespace, "writer-on")
