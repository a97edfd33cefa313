"""The e2e tier: a real cluster, kvol installed from its chart and image, and tests that
act only through kubectl and pod specs.

KVOL_E2E_TARGET names the cluster:

- ``one-node`` (the default): a one-node cluster on this machine (hack/cluster-up.sh),
  started by the tier and stopped at its end, kvol's image built into it;
- ``kind``: the offline three-node kind cluster of ``KVOL_KIND_OFFLINE=1 hack/kind-up.sh``
  (its kubeconfig and wrappers in $KVOL_KIND_DIR, context kind-$KVOL_KIND_CLUSTER), which
  must already run with kvol's image loaded; the tier neither starts nor stops it
  (``make e2e-kind`` does both: hack/kind-e2e.sh). Pods of the tests run on one worker
  unless they name a node, as on one node; tests marked ``targets("kind")`` use both.

The same tests run on both. A test marked ``@pytest.mark.targets(*names, reason=...)``
runs only on those targets; elsewhere it is deselected and listed, with the reason, at the
end of the run.

Every test runs against kvol with its store on a directory of the node; tests marked
``@pytest.mark.backends("filesystem", "minio")`` run a second time with the store on MinIO
(``hack/cluster-up.sh --minio``, inside the cluster's network), the chart upgraded to its s3
backend. Tests are grouped by backend, so the install changes once.

A missing part fails the tier with the script that provides it; nothing is skipped.
Set KVOL_E2E_KEEP=1 to leave the one-node cluster running afterwards (hack/cluster-down.sh
stops it, MinIO included).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import (
    TARGET,
    TARGETS,
    Cluster,
    KindCluster,
    SetupFailed,
    make_cluster,
    run_script,
    unique,
)
from tests.tools import tool

BACKENDS = ("filesystem", "minio")
HERE = Path(__file__).resolve().parent
#: Tests not run on this target, with the reason their marker gives (listed at the end).
NOT_HERE: list[tuple[str, str]] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "backends(*names): run an e2e test once per store backend named (filesystem, minio)",
    )
    config.addinivalue_line(
        "markers",
        "targets(*names, reason): run an e2e test only on these clusters (one-node, kind)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("targets")
        if marker is None or not item.path.is_relative_to(HERE):
            kept.append(item)
            continue
        unknown = set(marker.args) - set(TARGETS)
        if unknown or not marker.kwargs.get("reason"):
            raise ValueError(f"{item.nodeid}: targets() needs names of {TARGETS} and a reason")
        if TARGET in marker.args:
            kept.append(item)
        else:
            dropped.append(item)
            NOT_HERE.append((item.nodeid, str(marker.kwargs["reason"])))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if NOT_HERE:
        terminalreporter.write_sep("=", f"not run on the {TARGET} cluster (KVOL_E2E_TARGET)")
        for nodeid, reason in NOT_HERE:
            terminalreporter.write_line(f"{nodeid}: {reason}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        names = marker.args if marker else ("filesystem",)
        unknown = set(names) - set(BACKENDS)
        if unknown:
            raise ValueError(f"unknown e2e backends {sorted(unknown)}: choose from {BACKENDS}")
        metafunc.parametrize("backend", names, indirect=True, scope="package")


# Package scope: the cluster stops when the tier ends, not when the whole run does.
@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    try:
        target = make_cluster()
    except SetupFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    if isinstance(target, KindCluster):
        yield from _kind(target)
        return
    tool("kubectl", "install-kube.sh")
    tool("helm", "install-helm.sh")
    started = time.monotonic()
    try:
        timings = [run_script("cluster-up.sh"), run_script("build-image.sh", "kvol")]
    except SetupFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    print(
        f"\ne2e cluster up in {time.monotonic() - started:.1f}s ({'; '.join(timings)})",
        file=sys.stderr,
    )
    yield target
    if os.environ.get("KVOL_E2E_KEEP") != "1":
        run_script("cluster-down.sh")


def _kind(cluster: KindCluster) -> Iterator[Cluster]:
    """The kind cluster, which hack/kind-up.sh made and hack/kind-e2e.sh removes."""
    try:
        nodes = cluster.nodes()
        cluster.image_digest()
    except SetupFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    ready = cluster.kubectl("get", "--raw", "/readyz", check=False)
    if ready.returncode != 0:
        pytest.fail(
            f"kind cluster {cluster.context} does not answer ({ready.stderr.strip()}): run "
            "KVOL_KIND_OFFLINE=1 hack/kind-up.sh",
            pytrace=False,
        )
    print(f"\ne2e on kind cluster {cluster.context}: nodes {', '.join(nodes)}", file=sys.stderr)
    yield cluster


@pytest.fixture(scope="package")
def backend(request: pytest.FixtureRequest, cluster: Cluster) -> str:
    """kvol installed with its store on this backend (the chart upgraded if it was on
    another one)."""
    name: str = request.param
    if cluster.backend != name:
        started = time.monotonic()
        try:
            cluster.install(name)
        except SetupFailed as exc:
            pytest.fail(str(exc), pytrace=False)
        print(f"\nkvol installed on {name} in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return name


@pytest.fixture
def namespace(cluster: Cluster, backend: str) -> Iterator[str]:
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
