"""The e2e tier: a real one-node cluster (hack/cluster-up.sh), kvol installed from its chart
and image, and tests that act only through kubectl and pod specs.

A missing part fails the tier with the script that provides it; nothing is skipped.
Set KVOL_E2E_KEEP=1 to leave the cluster running afterwards (hack/cluster-down.sh stops it).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import (
    CLUSTER_DIR,
    KVOL_IMAGE_TAG,
    RELEASE,
    RELEASE_NAMESPACE,
    REPO,
    Cluster,
    SetupFailed,
    run_script,
    unique,
)
from tests.tools import tool

#: Values of the e2e install: the locally built image, the cluster's own directories, a
#: filesystem store on the node, and short intervals so tests wait little.
VALUES = (
    f"image.kvol.tag={KVOL_IMAGE_TAG}",
    "image.kvol.pullPolicy=Never",
    f"node.kubeletDir={CLUSTER_DIR}/kubelet",
    f"node.stateDir={CLUSTER_DIR}/kvol-state",
    f"backend.filesystem.hostPath={CLUSTER_DIR}/store",
    "node.autocommitSeconds=2",
    "controller.statusIntervalSeconds=2",
    "node.logLevel=DEBUG",
)


# Package scope: the cluster stops when the tier ends, not when the whole run does.
@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    tool("kubectl", "install-kube.sh")
    tool("helm", "install-helm.sh")
    started = time.monotonic()
    try:
        timings = [run_script("cluster-up.sh"), run_script("build-image.sh", "kvol")]
    except SetupFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    c = Cluster()
    args = ["upgrade", "--install", RELEASE, str(REPO / "charts" / "kvol")]
    args += ["--namespace", RELEASE_NAMESPACE, "--create-namespace", "--wait", "--timeout", "5m"]
    for value in VALUES:
        args += ["--set", value]
    try:
        c.helm(*args)
    except SetupFailed as exc:
        pods = c.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
        events = c.kubectl("get", "events", "-n", RELEASE_NAMESPACE, check=False).stdout
        pytest.fail(f"{exc}\npods:\n{pods}\nevents:\n{events}", pytrace=False)
    print(
        f"\ne2e cluster ready in {time.monotonic() - started:.1f}s ({'; '.join(timings)})",
        file=sys.stderr,
    )
    yield c
    if os.environ.get("KVOL_E2E_KEEP") != "1":
        run_script("cluster-down.sh")


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A namespace of its own for one test; deleted afterwards (pods first, so they commit)."""
    name = unique("e2e")
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl(
        "delete",
        "pods",
        "--all",
        "-n",
        name,
        "--wait=true",
        "--timeout=180s",
        check=False,
        timeout=240,
    )
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
