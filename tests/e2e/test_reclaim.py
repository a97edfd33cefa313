"""Deleting a Volume follows its reclaim policy, and waits while a pod uses it."""

from __future__ import annotations

import pytest

from tests.e2e.cluster import Cluster, pod, unique, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def _write(cluster: Cluster, namespace: str, vol: str) -> None:
    cluster.apply(pod("seed", "echo kept > /data/kept.txt", inline=vol), namespace=namespace)
    cluster.wait_pod_phase(namespace, "seed", ("Succeeded",))
    cluster.delete_pod(namespace, "seed")


def _listing(cluster: Cluster, namespace: str, vol: str) -> list[str]:
    cluster.apply(pod("lister", "ls /data", inline=vol), namespace=namespace)
    cluster.wait_pod_phase(namespace, "lister", ("Succeeded",))
    names = cluster.logs(namespace, "lister").split()
    cluster.delete_pod(namespace, "lister")
    return names


def _gone(cluster: Cluster, namespace: str, vol: str) -> None:
    wait_for(
        lambda: cluster.get("volumes.kvol.dev", vol, namespace) is None,
        120,
        f"Volume {vol} to be deleted",
    )


def test_retain_keeps_the_data_for_a_volume_of_the_same_name(
    cluster: Cluster, namespace: str
) -> None:
    vol = unique("kept")
    cluster.create_volume(namespace, vol, reclaimPolicy="Retain")
    _write(cluster, namespace, vol)
    cluster.kubectl("delete", "volumes.kvol.dev", vol, "-n", namespace, "--wait=true")
    _gone(cluster, namespace, vol)
    wait_for(
        lambda: any(e.startswith("Retained") for e in cluster.events(namespace, vol)),
        30,
        "the Retained event",
    )
    cluster.create_volume(namespace, vol, reclaimPolicy="Retain")
    assert _listing(cluster, namespace, vol) == ["kept.txt"]


def test_delete_waits_for_the_last_pod_then_removes_the_data(
    cluster: Cluster, namespace: str
) -> None:
    vol = unique("scratch")
    cluster.create_volume(namespace, vol, reclaimPolicy="Delete")
    _write(cluster, namespace, vol)
    cluster.apply(
        pod("user", "trap 'exit 0' TERM; sleep 3600 & wait", inline=vol), namespace=namespace
    )
    cluster.wait_pod_phase(namespace, "user", ("Running",))
    cluster.kubectl("delete", "volumes.kvol.dev", vol, "-n", namespace, "--wait=false")
    wait_for(
        lambda: cluster.volume_phase(namespace, vol) == "Terminating",
        60,
        f"Volume {vol} to be Terminating",
    )
    in_use = wait_for(
        lambda: (
            "mounted by pod(s) user"
            in str((cluster.get("volumes.kvol.dev", vol, namespace) or {}).get("status", {}))
        ),
        60,
        "the Volume's status to name the pod using it",
    )
    assert in_use
    # Still there while the pod runs.
    assert cluster.get("volumes.kvol.dev", vol, namespace) is not None
    cluster.delete_pod(namespace, "user")
    _gone(cluster, namespace, vol)
    wait_for(
        lambda: any(e.startswith("Deleted") for e in cluster.events(namespace, vol)),
        30,
        "the Deleted event",
    )
    cluster.create_volume(namespace, vol, reclaimPolicy="Delete")
    assert _listing(cluster, namespace, vol) == []
