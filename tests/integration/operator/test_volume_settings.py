"""A Volume's autocommitIntervalSeconds reaches the working copies of the pods that mount it:
the operator (against a real kube-apiserver) keeps it in the store, and a real node
plugin process reads it at publish."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kvol.mounting import overlay_supported
from kvol.repo import Repo
from kvol.store import FilesystemStore
from tests.integration.csi.plugin import Kubelet, Plugin, publications, unmount_all
from tests.integration.operator.cluster import Cluster, Operator, wait_for
from tests.integration.operator.helpers import get_volume, volume_yaml, wait_ready

pytestmark = pytest.mark.kube


@pytest.fixture
def plugin(default_store: Path, tmp_path: Path) -> Iterator[Plugin]:
    if not overlay_supported():
        pytest.fail("the node plugin needs root and overlayfs", pytrace=False)
    p = Plugin(tmp_path / "node", f"file://{default_store}")
    p.workdir.mkdir()
    p.start()
    try:
        yield p
    finally:
        p.stop()
        unmount_all(p.workdir)


def _interval(plugin: Plugin, target: Path) -> object:
    (pub,) = [p for p in publications(plugin) if p["target_path"] == str(target)]
    return pub["autocommit_seconds"]


def test_autocommit_interval_reaches_the_pods_working_copies(
    cluster: Cluster,
    operator: Operator,
    plugin: Plugin,
    default_store: Path,
    namespace: str,
) -> None:
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=volume_yaml("ac", autocommitIntervalSeconds=1)
    )
    volume_id = wait_ready(cluster, namespace, "ac")["status"]["volumeId"]
    repo = Repo(FilesystemStore(default_store), volume_id)
    kubelet = Kubelet(plugin, plugin.workdir / "kubelet")
    first = kubelet.pod(namespace)
    kubelet.publish(first, "ac")
    assert _interval(plugin, first.target) == 1
    # Observed: a file the pod writes is in the store within about a second, with no
    # commit asked for.
    (first.target / "written.txt").write_text("by autocommit")
    started = time.monotonic()
    wait_for(lambda: "written.txt" in repo.state().files, 10, "the autocommit")
    print(f"autocommitted after {time.monotonic() - started:.2f}s")

    # 0 turns it off, for the pods that start after the change.
    cluster.kubectl(
        "patch", "volume", "-n", namespace, "ac", "--type=merge",
        "-p", '{"spec": {"autocommitIntervalSeconds": 0}}',
    )  # fmt: skip

    def reconciled() -> bool:
        volume = get_volume(cluster, namespace, "ac") or {}
        status = volume.get("status") or {}
        return bool(
            status.get("phase") == "Ready"
            and status.get("observedGeneration") == volume["metadata"]["generation"]
        )

    wait_for(reconciled, 15, "the operator to apply the new interval")
    second = kubelet.pod(namespace)
    kubelet.publish(second, "ac")
    assert _interval(plugin, second.target) == 0
    assert _interval(plugin, first.target) == 1
    # A pod's own volume attribute still overrides the Volume's interval.
    third = kubelet.pod(namespace)
    kubelet.publish(third, "ac", attributes={"autocommitIntervalSeconds": "3"})
    assert _interval(plugin, third.target) == 3
    for pod in (first, second, third):
        kubelet.unpublish(pod)


def test_status_counts_pods_and_shows_the_commit_each_has(
    cluster: Cluster,
    operator: Operator,
    plugin: Plugin,
    namespace: str,
) -> None:
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=volume_yaml("w", autocommitIntervalSeconds=0)
    )
    wait_ready(cluster, namespace, "w")
    kubelet = Kubelet(plugin, plugin.workdir / "kubelet")
    first = kubelet.pod(namespace, "first")
    # The same pod mounts the volume twice: two working copies, one writer.
    again = replace(
        first,
        target=first.target.parent.parent / "second" / "mount",
        volume_id=first.volume_id + "-2",
    )
    again.target.parent.mkdir(parents=True)
    second = kubelet.pod(namespace, "second")
    for pod in (first, again, second):
        kubelet.publish(pod, "w")
        (pod.target / f"{pod.volume_id}.txt").write_text(pod.name)
        kubelet.unpublish(pod)  # the final commit

    def counted() -> dict[str, Any] | None:
        volume = get_volume(cluster, namespace, "w")
        status = (volume or {}).get("status") or {}
        return status if status.get("headSeq") == 3 else None

    status = wait_for(counted, 15, "the status to show the three commits")
    assert status["writers"] == 2, status
    pods = {p["name"]: p for p in status["pods"]}
    assert set(pods) == {"first", "second"}, status
    assert pods["second"]["lastCommit"] == 3 and pods["second"]["baseSeq"] == 3
    assert pods["first"]["lastCommit"] == 2
    assert [p["name"] for p in status["pods"]] == ["second", "first"]  # newest first
