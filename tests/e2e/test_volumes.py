"""Volumes as users see them: applied with kubectl, mounted by pods inline and by claim,
written, and committed when the pods end."""

from __future__ import annotations

import pytest

from tests.e2e.cluster import Cluster, pod, unique, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
#: Run again with the store on MinIO (see conftest).
ON_BOTH_STORES = pytest.mark.backends("filesystem", "minio")


def ready_volume(cluster: Cluster, namespace: str, **spec: object) -> str:
    name = unique("vol")
    cluster.create_volume(namespace, name, **spec)
    return name


def run_to_completion(cluster: Cluster, namespace: str, *pods: dict[str, object]) -> list[str]:
    """Run ``pods`` at once until each succeeds; their logs; then delete them and wait until
    the kubelet has torn each down (its volume unpublished, so committed)."""
    cluster.apply(*pods, namespace=namespace)
    names = [str(p["metadata"]["name"]) for p in pods]  # type: ignore[index]
    for name in names:
        cluster.wait_pod_phase(namespace, name, ("Succeeded",))
    logs = [cluster.logs(namespace, name) for name in names]
    for name in names:
        cluster.delete_pod(namespace, name)
    return logs


def read_back(cluster: Cluster, namespace: str, vol: str, script: str) -> str:
    """Output of ``script`` in a fresh pod mounting the volume's latest commit at /data."""
    (out,) = run_to_completion(cluster, namespace, pod(unique("reader"), script, inline=vol))
    return out


@ON_BOTH_STORES
def test_volume_applied_with_kubectl_becomes_ready(cluster: Cluster, namespace: str) -> None:
    name = ready_volume(cluster, namespace)
    obj = cluster.get("volumes.kvol.dev", name, namespace)
    assert obj["status"]["phase"] == "Ready"
    # The operator made the claim users mount it by, named like the Volume.
    claim = wait_for(lambda: cluster.get("pvc", name, namespace), 60, f"the claim of Volume {name}")
    assert claim["spec"]["resources"]["requests"]["storage"]


@ON_BOTH_STORES
def test_inline_and_claim_pods_write_distinct_files_and_both_land(
    cluster: Cluster, namespace: str
) -> None:
    vol = ready_volume(cluster, namespace)
    wait_for(lambda: cluster.get("pvc", vol, namespace), 60, f"the claim of Volume {vol}")
    # Both mounted at once: each works on its own copy and neither calls commit.
    run_to_completion(
        cluster,
        namespace,
        pod("inline-writer", "echo from-inline > /data/inline.txt", inline=vol),
        pod(
            "claim-writer", "mkdir -p /data/sub && echo from-claim > /data/sub/claim.txt", claim=vol
        ),
    )
    out = read_back(cluster, namespace, vol, "cat /data/inline.txt /data/sub/claim.txt")
    assert out.split() == ["from-inline", "from-claim"]


@ON_BOTH_STORES
def test_same_file_is_last_commit_wins(cluster: Cluster, namespace: str) -> None:
    vol = ready_volume(cluster, namespace)
    run_to_completion(cluster, namespace, pod("first", "echo first > /data/same.txt", inline=vol))
    run_to_completion(cluster, namespace, pod("second", "echo second > /data/same.txt", inline=vol))
    assert read_back(cluster, namespace, vol, "cat /data/same.txt").strip() == "second"


@ON_BOTH_STORES
def test_pod_that_exits_without_commit_has_its_files_in_the_volume(
    cluster: Cluster, namespace: str
) -> None:
    vol = ready_volume(cluster, namespace)
    script = (
        "mkdir -p /data/out/deep && for i in $(seq 1 200); do echo line-$i > /data/out/f$i; done"
        " && head -c 3000000 /dev/zero | tr '\\0' x > /data/out/deep/big && sync; exit 0"
    )
    run_to_completion(cluster, namespace, pod("quick-exit", script, inline=vol))
    out = read_back(
        cluster,
        namespace,
        vol,
        "ls /data/out | wc -l; cat /data/out/f1 /data/out/f200; wc -c < /data/out/deep/big",
    )
    assert out.split() == ["201", "line-1", "line-200", "3000000"]


def test_pod_that_commits_before_exiting_hands_its_files_to_the_next_pod(
    cluster: Cluster, namespace: str
) -> None:
    # The documented way to hand files on: the end commit runs when the kubelet unmounts,
    # after the pod shows Succeeded, but an explicit commit has landed when it returns.
    vol = ready_volume(cluster, namespace)
    cluster.apply(
        pod(
            "producer",
            "echo handed-on > /data/result.txt && "
            "curl -sf --unix-socket /data/.kvol/control.sock -X POST http://kvol/commit",
            inline=vol,
        ),
        namespace=namespace,
    )
    cluster.wait_pod_phase(namespace, "producer", ("Succeeded",))
    # Started at once: the producer is neither deleted nor unmounted yet.
    consumer = pod("consumer", "cat /data/result.txt", inline=vol)
    cluster.apply(consumer, namespace=namespace)
    cluster.wait_pod_phase(namespace, "consumer", ("Succeeded",))
    assert cluster.logs(namespace, "consumer").strip() == "handed-on"


def test_read_only_mount_refuses_writes(cluster: Cluster, namespace: str) -> None:
    vol = ready_volume(cluster, namespace)
    run_to_completion(cluster, namespace, pod("seed", "echo seed > /data/seed.txt", inline=vol))
    (out,) = run_to_completion(
        cluster,
        namespace,
        pod(
            "ro",
            "cat /data/seed.txt; if touch /data/new.txt 2>/dev/null; then echo wrote; "
            "else echo refused; fi",
            inline=vol,
            read_only=True,
        ),
    )
    assert out.split() == ["seed", "refused"]
    assert read_back(cluster, namespace, vol, "ls /data").split() == ["seed.txt"]
