"""What an operator of the cluster sees and does: metrics scraped from the pods, and a
kubelet restarted under a running pod."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.e2e.cluster import RELEASE_NAMESPACE, Cluster, pod, unique, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def scrape(cluster: Cluster, component: str, port: int) -> dict[str, float]:
    """The pod's /metrics through the apiserver's pod proxy: sample line -> value."""
    name = cluster.running_pods(component, ".metadata.name")[0]
    text = cluster.kubectl(
        "get", "--raw", f"/api/v1/namespaces/{RELEASE_NAMESPACE}/pods/{name}:{port}/proxy/metrics"
    ).stdout
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][^ ]*) ([0-9.eE+-]+|NaN)$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def total(samples: dict[str, float], metric: str) -> float:
    return sum(v for k, v in samples.items() if k == metric or k.startswith(metric + "{"))


def test_metrics_scraped_from_the_pods_show_commits_and_writers(
    cluster: Cluster, namespace: str
) -> None:
    vol = unique("vol")
    cluster.create_volume(namespace, vol)
    commits_before = total(scrape(cluster, "node", 9810), "kvol_commits_total")
    cluster.apply(
        pod("writer", "trap 'exit 0' TERM; echo x > /data/x; sleep 3600 & wait", inline=vol),
        namespace=namespace,
    )
    cluster.wait_pod_phase(namespace, "writer", ("Running",))
    wait_for(
        lambda: total(scrape(cluster, "node", 9810), "kvol_writers") >= 1,
        60,
        "the plugin's kvol_writers to count the running pod",
    )
    cluster.delete_pod(namespace, "writer")
    samples = scrape(cluster, "node", 9810)
    assert total(samples, "kvol_commits_total") > commits_before
    assert total(samples, "csi_plugin_operations_seconds_count") > 0
    operator = scrape(cluster, "controller", 8080)
    assert total(operator, "kvol_operator_reconciles_total") > 0


def test_kubelet_restarted_mid_pod_loses_nothing(cluster: Cluster, namespace: str) -> None:
    vol = unique("vol")
    cluster.create_volume(namespace, vol)
    writer = (
        "i=0; while [ $i -lt 60 ]; do echo content-$i > /data/f$i; i=$((i+1)); sleep 0.25; done"
    )
    cluster.apply(pod("writer", writer, inline=vol), namespace=namespace)
    cluster.wait_pod_phase(namespace, "writer", ("Running",))
    time.sleep(3)
    cluster.restart_kubelet(cluster.node_of(namespace, "writer"))
    cluster.wait_pod_phase(namespace, "writer", ("Succeeded",), timeout=180)
    cluster.delete_pod(namespace, "writer")
    check = (
        "n=0; i=0; while [ $i -lt 60 ]; do "
        '[ "$(cat /data/f$i 2>/dev/null)" = content-$i ] && n=$((n+1)); i=$((i+1)); done; echo $n'
    )
    cluster.apply(pod("reader", check, inline=vol), namespace=namespace)
    cluster.wait_pod_phase(namespace, "reader", ("Succeeded",))
    assert cluster.logs(namespace, "reader").strip() == "60"


def _store_writable(cluster: Cluster, writable: bool) -> None:
    """The filesystem store refuses every write (even root's) while its directories are
    immutable: for the plugin, a store that is down."""
    flag = "-i" if writable else "+i"
    subprocess.run(["chattr", "-R", flag, str(cluster.store)], check=True, capture_output=True)


def test_store_down_while_a_pod_ends_keeps_it_terminating_until_it_commits(
    cluster: Cluster, namespace: str
) -> None:
    vol = unique("vol")
    cluster.create_volume(namespace, vol)
    cluster.apply(
        pod(
            "writer",
            # Written only once the store is down, so no background commit can carry it.
            "trap 'exit 0' TERM; sleep 5; echo precious > /data/precious.txt; echo written; "
            "sleep 3600 & wait",
            inline=vol,
        ),
        namespace=namespace,
    )
    cluster.wait_pod_phase(namespace, "writer", ("Running",))
    _store_writable(cluster, False)
    try:
        wait_for(
            lambda: "written" in cluster.logs(namespace, "writer"), 60, "the pod to write its file"
        )
        cluster.kubectl("delete", "pod", "writer", "-n", namespace, "--wait=false")
        # The final commit cannot land: the kubelet keeps retrying the unpublish and the pod
        # stays, Terminating, instead of vanishing with its data; an event on it says why.
        deleted = time.monotonic()
        (event,) = wait_for(
            lambda: [e for e in cluster.events(namespace, "writer") if "FinalCommit" in e],
            60,
            "a FinalCommitRetrying event on the pod",
        )
        assert event.startswith("FinalCommitRetrying: ")
        assert f"final commit of kvol volume {vol!r} failed" in event
        assert "finishes terminating once it lands" in event
        time.sleep(max(0.0, 20 - (time.monotonic() - deleted)))
        obj = cluster.get("pod", "writer", namespace)
        assert obj is not None and obj["metadata"].get("deletionTimestamp")
        # The kubelet retried many times meanwhile: still one event, from the node plugin.
        retrying = cluster.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            "involvedObject.name=writer,reason=FinalCommitRetrying",
            "-o",
            "jsonpath={range .items[*]}{.type} {.source.component} {.count}{'\\n'}{end}",
        ).stdout.split("\n")
        assert [line for line in retrying if line] == ["Warning kvol-csi 1"]
    finally:
        _store_writable(cluster, True)
    wait_for(
        lambda: cluster.get("pod", "writer", namespace) is None,
        180,
        "the pod to finish once the store is back",
    )
    cluster.apply(pod("reader", "cat /data/precious.txt", inline=vol), namespace=namespace)
    cluster.wait_pod_phase(namespace, "reader", ("Succeeded",))
    assert cluster.logs(namespace, "reader").strip() == "precious"
