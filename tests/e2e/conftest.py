"""The e2e tier: a real one-node cluster (hack/cluster-up.sh), kvol installed from its chart
and image, and tests that act only through kubectl and pod specs.

Every test runs against kvol with its store on a directory of the node; tests marked
``@pytest.mark.backends("filesystem", "minio")`` run a second time with the store on MinIO
(``hack/cluster-up.sh --minio``, inside the cluster's network), the chart upgraded to its s3
backend. Tests are grouped by backend, so the install changes once.

A missing part fails the tier with the script that provides it; nothing is skipped.
Set KVOL_E2E_KEEP=1 to leave the cluster running afterwards (hack/cluster-down.sh stops it,
MinIO included).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, SetupFailed, run_script, unique
from tests.tools import tool

BACKENDS = ("filesystem", "minio")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "backends(*names): run an e2e test once per store backend named (filesystem, minio)",
    )


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
    yield Cluster()
    if os.environ.get("KVOL_E2E_KEEP") != "1":
        run_script("cluster-down.sh")


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
