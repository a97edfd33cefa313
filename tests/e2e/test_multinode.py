"""Several nodes, one store: a pod on one worker commits, a pod already running on another
worker sees the file after reload(); a pod's final commit on one worker is read by a pod on
the other; and the cluster's DNS, which runs on the control plane, answers pods on a worker.
Pods name their node, so each check crosses nodes for certain."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.cluster import BUSYBOX, Cluster, pod, unique

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.targets("kind", reason="needs two worker nodes; the one-node cluster has one"),
]

# Reloads through the mount's control socket, as users do, until the file is there.
READER = (
    "while :; do "
    "  curl -sf --unix-socket /data/.kvol/control.sock -X POST http://kvol/reload >/dev/null"
    "    || echo reload-failed; "
    '  if [ -f /data/hello ]; then echo "found: $(cat /data/hello)"; exit 0; fi; '
    "  sleep 0.5; "
    "done"
)
WRITER = (
    "echo written-on-$NODE > /data/hello; "
    "curl -sf --unix-socket /data/.kvol/control.sock -X POST http://kvol/commit >/dev/null "
    "&& echo committed; "
    "trap 'exit 0' TERM; sleep 3600 & wait"
)


def on(node: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` (a pod) bound to ``node``, with the node's name in $NODE."""
    spec["spec"]["nodeName"] = node
    for container in spec["spec"]["containers"]:
        container["env"] = [{"name": "NODE", "value": node}]
    return spec


def two_workers(cluster: Cluster) -> tuple[str, str]:
    workers = cluster.workers()
    assert len(workers) >= 2, f"two worker nodes needed, the cluster has {workers}"
    return workers[0], workers[1]


def test_a_commit_on_one_worker_is_seen_after_reload_on_another(
    cluster: Cluster, namespace: str
) -> None:
    first, second = two_workers(cluster)
    vol = unique("shared")
    # No background commits: only the writer's commit() can carry the file.
    cluster.create_volume(namespace, vol, autocommitIntervalSeconds=0)
    # The reader runs first, so it starts from a commit without the file.
    cluster.apply(on(second, pod("reader", READER, inline=vol)), namespace=namespace)
    cluster.wait_pod_phase(namespace, "reader", ("Running",))
    cluster.apply(on(first, pod("writer", WRITER, inline=vol)), namespace=namespace)
    cluster.wait_pod_phase(namespace, "reader", ("Succeeded",), timeout=120)
    assert cluster.logs(namespace, "writer").split() == ["committed"]
    assert cluster.logs(namespace, "reader").split() == ["found:", f"written-on-{first}"]
    assert (cluster.node_of(namespace, "writer"), cluster.node_of(namespace, "reader")) == (
        first,
        second,
    )
    cluster.delete_pod(namespace, "reader")
    cluster.delete_pod(namespace, "writer")


def test_a_pods_final_commit_on_one_worker_reaches_a_pod_on_another(
    cluster: Cluster, namespace: str
) -> None:
    first, second = two_workers(cluster)
    vol = unique("final")
    cluster.create_volume(namespace, vol, autocommitIntervalSeconds=0)
    # No commit in the pod: only the one the plugin makes when it ends.
    cluster.apply(
        on(second, pod("ender", "echo left-by-$NODE > /data/note", inline=vol)),
        namespace=namespace,
    )
    cluster.wait_pod_phase(namespace, "ender", ("Succeeded",))
    cluster.delete_pod(namespace, "ender")
    cluster.apply(on(first, pod("later", "cat /data/note", inline=vol)), namespace=namespace)
    cluster.wait_pod_phase(namespace, "later", ("Succeeded",))
    assert cluster.logs(namespace, "later").strip() == f"left-by-{second}"
    cluster.delete_pod(namespace, "later")


def test_cluster_dns_answers_a_pod_on_a_worker(cluster: Cluster, namespace: str) -> None:
    coredns = cluster.kubectl(
        "get",
        "pods",
        "-n",
        "kube-system",
        "-l",
        "k8s-app=kube-dns",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ).stdout.split()
    # A worker without CoreDNS, so the query crosses the pod network to another node.
    elsewhere = [w for w in cluster.workers() if w not in coredns]
    assert coredns and elsewhere, f"CoreDNS on {coredns}, workers {cluster.workers()}"
    dns = cluster.get("service", "kube-dns", "kube-system")
    api = cluster.get("service", "kubernetes", "default")
    assert dns is not None and api is not None
    # busybox's nslookup also asks for AAAA and exits 1 when there is none: judge the answer.
    lookup = f"nslookup -type=A kubernetes.default.svc.cluster.local {dns['spec']['clusterIP']}"
    spec = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "dns"},
        "spec": {
            "nodeName": elsewhere[0],
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": BUSYBOX,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", lookup + "; true"],
                }
            ],
        },
    }
    cluster.apply(spec, namespace=namespace)
    cluster.wait_pod_phase(namespace, "dns", ("Succeeded",))
    answer = cluster.logs(namespace, "dns").splitlines()
    assert f"Address: {api['spec']['clusterIP']}" in answer, answer
