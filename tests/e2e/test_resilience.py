"""The node plugin dies or is replaced while pods write: nothing they wrote is lost."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tests.e2e.cluster import RELEASE_NAMESPACE, Cluster, pod, unique, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
#: Run again with the store on MinIO (see conftest).
ON_BOTH_STORES = pytest.mark.backends("filesystem", "minio")

FILES = 60
# One file every 0.25 s for 15 s, then exit without committing: the final commit (by
# whichever plugin process owns the working copy then) must carry every one.
WRITER = (
    f"i=0; while [ $i -lt {FILES} ]; do echo content-$i > /data/f$i; i=$((i+1)); sleep 0.25; "
    "done; exit 0"
)
CHECK = (
    f"n=0; i=0; while [ $i -lt {FILES} ]; do "
    '[ "$(cat /data/f$i 2>/dev/null)" = content-$i ] && n=$((n+1)); i=$((i+1)); done; echo $n'
)
# SIGKILL the plugin of this container from inside it (the pod shares the host's pids):
# the process running this image's kvol-csi, with this container's root.
KILL_PLUGIN = """
import os, signal
root = os.stat("/")
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
        same_root = os.stat(f"/proc/{pid}/root")
    except OSError:
        continue
    if argv[1:2] == [b"/usr/local/bin/kvol-csi"] and (same_root.st_dev, same_root.st_ino) == (root.st_dev, root.st_ino):
        os.kill(int(pid), signal.SIGKILL)
        print("killed", pid)
"""


def plugin(cluster: Cluster) -> dict[str, object]:
    """The node plugin's pod on the node the test's pods run on."""
    selector = f"--field-selector=spec.nodeName={cluster.pinned_node}"
    on_node = [selector] if cluster.pinned_node else []
    pods = cluster.kubectl(
        "get",
        "pods",
        "-n",
        RELEASE_NAMESPACE,
        "-l",
        "app.kubernetes.io/component=node",
        *on_node,
        "-o",
        "json",
    )
    items = [
        p for p in json.loads(pods.stdout)["items"] if not p["metadata"].get("deletionTimestamp")
    ]
    assert len(items) == 1, [p["metadata"]["name"] for p in items]
    return dict(items[0])


def plugin_ready(cluster: Cluster) -> dict[str, object] | None:
    p = plugin(cluster)
    statuses = p.get("status", {}).get("containerStatuses") or []  # type: ignore[attr-defined]
    return p if statuses and all(s["ready"] for s in statuses) else None


def write_through(cluster: Cluster, namespace: str, disrupt: Callable[[], None]) -> None:
    vol = unique("vol")
    cluster.create_volume(namespace, vol)
    cluster.apply(pod("writer", WRITER, inline=vol), namespace=namespace)
    cluster.wait_pod_phase(namespace, "writer", ("Running",))
    time.sleep(3)
    disrupt()
    cluster.wait_pod_phase(namespace, "writer", ("Succeeded",), timeout=180)
    wait_for(lambda: plugin_ready(cluster), 180, "the node plugin to be ready again")
    cluster.delete_pod(namespace, "writer")
    cluster.apply(pod("reader", CHECK, inline=vol), namespace=namespace)
    cluster.wait_pod_phase(namespace, "reader", ("Succeeded",))
    assert cluster.logs(namespace, "reader").strip() == str(FILES)


@ON_BOTH_STORES
def test_plugin_killed_while_a_pod_writes_loses_nothing(cluster: Cluster, namespace: str) -> None:
    before = plugin(cluster)
    name = str(before["metadata"]["name"])  # type: ignore[index]
    restarts = before["status"]["containerStatuses"][0]["restartCount"]  # type: ignore[index]

    def kill() -> None:
        done = cluster.kubectl(
            "exec",
            "-n",
            RELEASE_NAMESPACE,
            name,
            "-c",
            "driver",
            "--",
            "python3",
            "-c",
            KILL_PLUGIN,
            check=False,
        )
        # The plugin is the container's main process: its death tears the container
        # down, and that may kill this very exec (137) before it reports. The restart
        # count checked below proves the kill either way.
        if done.returncode != 137:
            assert done.returncode == 0 and done.stdout.startswith("killed"), (
                f"exit {done.returncode}: {done.stdout} {done.stderr}"
            )

    write_through(cluster, namespace, kill)
    after = plugin(cluster)
    assert after["metadata"]["name"] == name  # type: ignore[index]
    assert after["status"]["containerStatuses"][0]["restartCount"] > restarts  # type: ignore[index]


def test_plugin_rollout_while_a_pod_writes_loses_nothing(cluster: Cluster, namespace: str) -> None:
    name = plugin(cluster)["metadata"]["name"]  # type: ignore[index]

    def rollout() -> None:
        cluster.kubectl("rollout", "restart", "daemonset", "-n", RELEASE_NAMESPACE, "kvol-node")
        cluster.kubectl(
            "rollout",
            "status",
            "daemonset",
            "-n",
            RELEASE_NAMESPACE,
            "kvol-node",
            "--timeout=180s",
            timeout=240,
        )

    write_through(cluster, namespace, rollout)
    assert plugin(cluster)["metadata"]["name"] != name  # type: ignore[index]
