"""Fixtures: etcd and kube-apiserver on loopback, the CRDs, a default backend, the operator."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.operator.cluster import (
    Cluster,
    Operator,
    install_crds,
    start_control_plane,
)
from tests.minio import minio, s3_bucket  # noqa: F401  (fixtures)
from tests.tools import tool


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    etcd = tool("etcd", "install-etcd.sh")
    apiserver = tool("kube-apiserver", "install-kube.sh")
    kubectl = tool("kubectl", "install-kube.sh")
    with start_control_plane(etcd, apiserver, kubectl, tmp_path_factory.mktemp("kube")) as c:
        install_crds(c)
        c.kubectl("create", "namespace", "kvol-system")
        yield c


@pytest.fixture(scope="session")
def default_store(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of the cluster's default VolumeBackend, ``local``."""
    path = tmp_path_factory.mktemp("default-store")
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=f"""
apiVersion: kvol.dev/v1alpha1
kind: VolumeBackend
metadata:
  name: local
spec:
  type: filesystem
  default: true
  filesystem:
    path: {path}
""",
    )
    return path


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{secrets.token_hex(4)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    # Namespaces are never finalized without a controller-manager; leave them.


@pytest.fixture
def operator(cluster: Cluster, default_store: Path, tmp_path: Path) -> Iterator[Operator]:
    with Operator(cluster, tmp_path / "operator").running() as op:
        yield op
