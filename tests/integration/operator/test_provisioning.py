"""Dynamic provisioning against a real kube-apiserver, with the controllers of
kube-controller-manager that bind claims, protect them, and make StatefulSets' claims
(no scheduler or kubelet: binding needs neither)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvol.catalog import Catalog
from kvol.errors import NotFound
from kvol.repo import Repo
from kvol.store import FilesystemStore
from tests.integration.operator.cluster import Cluster, Operator, Process, wait_for
from tests.integration.operator.helpers import (
    apply_claim,
    apply_storage_class,
    wait_event,
    wait_gone,
    wait_ready,
)
from tests.tools import tool

pytestmark = pytest.mark.kube


@pytest.fixture(scope="module")
def controllers(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    binary = tool("kube-controller-manager", "install-kube.sh")
    directory = tmp_path_factory.mktemp("controller-manager")
    proc = Process(
        "kube-controller-manager",
        [
            binary,
            f"--kubeconfig={cluster.kubeconfig}",
            "--controllers=persistentvolume-binder,pvc-protection,pv-protection,statefulset",
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            "--secure-port=0",
            "--pvclaimbinder-sync-period=1s",
            "--v=1",
        ],
        directory / "kube-controller-manager.log",
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    proc.start()
    try:
        yield
    finally:
        proc.stop()
        print(f"--- kube-controller-manager ---\n{proc.log_tail(40)}")


def _bound(cluster: Cluster, namespace: str, claim: str) -> dict[str, Any]:
    """The Volume made for ``claim`` once it is Ready and the claim is Bound to its PV."""
    volume = wait_ready(cluster, namespace, claim, timeout=30)

    def bound() -> dict[str, Any] | None:
        pvc = cluster.get_json("pvc", "-n", namespace, claim)
        phase = (pvc or {}).get("status", {}).get("phase")
        return pvc if phase == "Bound" else None

    pvc = wait_for(bound, 30, f"claim {claim} to be Bound")
    pv_name = volume["status"]["persistentVolumeName"]
    assert pvc["spec"]["volumeName"] == pv_name
    pv = cluster.get_json("pv", pv_name)
    assert pv["status"]["phase"] == "Bound"
    assert pv["spec"]["claimRef"]["uid"] == pvc["metadata"]["uid"]
    assert pv["spec"]["csi"]["driver"] == "csi.kvol.dev"
    return volume


def test_a_claim_of_the_kvol_class_gets_a_volume_and_follows_delete(
    cluster: Cluster,
    controllers: None,
    operator: Operator,
    default_store: Path,
    namespace: str,
) -> None:
    storage_class = apply_storage_class(cluster, "Delete", autocommitIntervalSeconds="2")
    claim = apply_claim(cluster, namespace, "data", storage_class)
    volume = _bound(cluster, namespace, "data")
    assert volume["metadata"]["annotations"]["kvol.dev/claim-uid"] == claim["metadata"]["uid"]
    assert volume["spec"]["reclaimPolicy"] == "Delete"
    assert volume["spec"]["autocommitIntervalSeconds"] == 2
    assert volume["spec"]["accessModes"] == ["ReadWriteMany"]
    assert volume["spec"]["size"] == "2Gi"
    wait_event(cluster, namespace, "data", ("Normal", "Provisioning"))
    store = FilesystemStore(default_store)
    volume_id = volume["status"]["volumeId"]
    assert Repo(store, volume_id).exists()

    cluster.kubectl("delete", "pvc", "-n", namespace, "data", "--timeout=30s")
    wait_gone(cluster, "volume", "-n", namespace, "data")
    assert not Repo(store, volume_id).exists()
    with pytest.raises(NotFound):
        Catalog.for_namespace(store, namespace).lookup("data")


def test_retain_class_keeps_the_data_of_a_deleted_claim(
    cluster: Cluster,
    controllers: None,
    operator: Operator,
    default_store: Path,
    namespace: str,
) -> None:
    storage_class = apply_storage_class(cluster, "Retain")
    apply_claim(cluster, namespace, "kept", storage_class)
    volume_id = _bound(cluster, namespace, "kept")["status"]["volumeId"]
    cluster.kubectl("delete", "pvc", "-n", namespace, "kept", "--timeout=30s")
    wait_gone(cluster, "volume", "-n", namespace, "kept")
    store = FilesystemStore(default_store)
    assert Catalog.for_namespace(store, namespace).lookup("kept").id == volume_id


def test_statefulset_claims_get_one_volume_each(
    cluster: Cluster,
    controllers: None,
    operator: Operator,
    namespace: str,
) -> None:
    storage_class = apply_storage_class(cluster, "Delete")
    cluster.apply(
        f"""
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: web}}
spec:
  replicas: 2
  serviceName: web
  # No kubelet runs pods here: make both replicas' claims without waiting for web-0.
  podManagementPolicy: Parallel
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: main, image: busybox, volumeMounts: [{{name: data, mountPath: /data}}]}}]
  volumeClaimTemplates:
    - metadata: {{name: data}}
      spec:
        storageClassName: {storage_class}
        accessModes: [ReadWriteMany]
        resources: {{requests: {{storage: 1Gi}}}}
""",
        namespace,
    )
    ids = {_bound(cluster, namespace, f"data-web-{i}")["status"]["volumeId"] for i in range(2)}
    assert len(ids) == 2


def test_claims_kvol_cannot_serve_are_told_why(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    storage_class = apply_storage_class(cluster, "Delete", version="7")
    apply_claim(cluster, namespace, "odd", storage_class)
    wait_event(cluster, namespace, "odd", ("Warning", "ProvisioningFailed"))
    assert cluster.get_json("volume", "-n", namespace, "odd") is None
