"""The operator against a real kube-apiserver and etcd, with real stores.

What a user does with kubectl: apply the examples, apply bad YAML, delete with each
reclaim policy, lose a backend and get it back, restart the operator mid-work.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from kvol.catalog import Catalog
from kvol.errors import NotFound
from kvol.repo import Repo
from kvol.store import FilesystemStore
from tests.integration.operator.cluster import REPO, Cluster, Operator, wait_for
from tests.integration.operator.helpers import (
    apply_claim,
    apply_storage_class,
    assert_status_matches_store,
    condition,
    get_volume,
    volume_yaml,
    wait_condition,
    wait_event,
    wait_gone,
    wait_ready,
    write_files,
)
from tests.minio import ACCESS_KEY, SECRET_KEY, MinioServer, start_minio

pytestmark = pytest.mark.kube


def _backend_yaml(name: str, path: Path) -> str:
    return f"""
apiVersion: kvol.dev/v1alpha1
kind: VolumeBackend
metadata: {{name: {name}}}
spec:
  type: filesystem
  filesystem: {{path: {path}}}
"""


def test_kubectl_surfaces(cluster: Cluster, operator: Operator, namespace: str) -> None:
    cluster.apply(volume_yaml("data"), namespace)
    wait_ready(cluster, namespace, "data")
    table = cluster.kubectl("get", "volumes", "-n", namespace).stdout
    header, row = table.splitlines()
    assert header.split() == ["NAME", "PHASE", "FILES", "SIZE", "HEAD", "WRITERS", "AGE"]
    assert row.split()[:6] == ["data", "Ready", "0", "0B", "0", "0"]
    # Short name and category.
    assert "data" in cluster.kubectl("get", "kvol", "-n", namespace).stdout
    assert "local" in cluster.kubectl("get", "kvb").stdout
    backends = cluster.kubectl("get", "volumebackends").stdout
    assert re.search(r"local\s+filesystem\s+true\s+Ready", backends), backends


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"version": 3}, 'spec.version: Unsupported value: 3: supported values: "1", "2"'),
        ({"reclaimPolicy": "Keep"}, "spec.reclaimPolicy: Unsupported value"),
        ({"limits": "{maxFiles: 0}"}, "spec.limits.maxFiles: Invalid value: 0"),
        ({"limits": "{maxBytes: lots}"}, "must be a positive byte count"),
        ({"backend": "Not_A_Name"}, "spec.backend: Invalid value"),
        ({"autocommitIntervalSeconds": -5}, "spec.autocommitIntervalSeconds: Invalid value"),
        ({"size": "big"}, "spec.size: Invalid value"),
    ],
)
def test_bad_volume_yaml_is_refused(
    cluster: Cluster, namespace: str, spec: dict[str, object], message: str
) -> None:
    result = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=volume_yaml("bad", **spec), check=False
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert get_volume(cluster, namespace, "bad") is None


def test_immutable_fields_are_refused_on_update(cluster: Cluster, namespace: str) -> None:
    cluster.apply(volume_yaml("fixed", version=2), namespace)
    changes: list[tuple[dict[str, Any], str]] = [
        ({"version": 1}, "spec.version is immutable"),
        ({"backend": "other"}, "spec.backend is immutable"),
        ({"limits": "{maxFiles: 10}"}, "spec.limits is immutable"),
    ]
    for change, message in changes:
        result = cluster.kubectl(
            "apply", "-n", namespace, "-f", "-", input=volume_yaml("fixed", **change), check=False
        )
        assert result.returncode != 0, change
        assert message in result.stderr, result.stderr


def test_bad_backend_yaml_is_refused(cluster: Cluster) -> None:
    both = """
apiVersion: kvol.dev/v1alpha1
kind: VolumeBackend
metadata: {name: both}
spec:
  type: filesystem
  filesystem: {path: /x}
  s3: {bucket: abc}
"""
    result = cluster.kubectl("apply", "-f", "-", input=both, check=False)
    assert "set exactly the block matching spec.type" in result.stderr, result.stderr
    relative = _backend_yaml("relative", Path("x"))
    result = cluster.kubectl("apply", "-f", "-", input=relative, check=False)
    assert "spec.filesystem.path: Invalid value" in result.stderr, result.stderr


def _examples(tmp_path: Path, default_store: Path, minio: MinioServer, bucket: str) -> Path:
    """The examples as shipped, pointed at this test's stores."""
    out = tmp_path / "examples"
    out.mkdir()
    for src in sorted((REPO / "examples").glob("*.yaml")):
        text = src.read_text()
        text = text.replace("/var/lib/kvol-store", str(default_store))
        text = text.replace("http://minio.kvol-system.svc:9000", minio.endpoint)
        text = text.replace("bucket: kvol", f"bucket: {bucket}")
        text = text.replace("accessKeyId: kvol-example", f"accessKeyId: {ACCESS_KEY}")
        text = text.replace("secretAccessKey: change-me-please", f"secretAccessKey: {SECRET_KEY}")
        (out / src.name).write_text(text)
    return out


def test_examples_reach_ready_with_status_matching_the_store(
    cluster: Cluster,
    operator: Operator,
    default_store: Path,
    minio: MinioServer,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    ns = "default"
    started = time.monotonic()
    cluster.kubectl("apply", "-f", str(_examples(tmp_path, default_store, minio, s3_bucket)))
    local = FilesystemStore(default_store)
    s3 = minio.store(s3_bucket, "volumes/")
    for name, store in (("datasets", local), ("scratch", local), ("models", s3)):
        volume = wait_ready(cluster, ns, name)
        assert_status_matches_store(volume, store)
        assert volume["status"]["backend"] == ("s3" if store is s3 else "local")
        pv = cluster.get_json("pv", volume["status"]["persistentVolumeName"])
        assert pv["spec"]["csi"]["volumeHandle"] == volume["status"]["volumeId"]
        assert pv["spec"]["csi"]["volumeAttributes"]["volume"] == name
        pvc = cluster.get_json("pvc", "-n", ns, name)
        assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
        wait_event(cluster, ns, name, ("Normal", "Provisioned"), ("Normal", "Ready"))
    print(f"examples Ready in {time.monotonic() - started:.2f}s")
    scratch = get_volume(cluster, ns, "scratch")
    assert scratch is not None
    limits = Repo(local, scratch["status"]["volumeId"]).meta.limits
    assert (limits.max_bytes, limits.max_files) == (10 << 30, 100_000)
    assert scratch["spec"]["reclaimPolicy"] == "Delete"

    # Writers commit; the status follows from the periodic pass, not from any event.
    datasets = wait_ready(cluster, ns, "datasets")
    volume_id = datasets["status"]["volumeId"]
    head = write_files(
        local, volume_id, tmp_path / "wc", {"a.txt": b"hello", "d/b.bin": b"x" * 5000}
    )

    def caught_up() -> dict[str, object] | None:
        volume = get_volume(cluster, ns, "datasets")
        return volume if volume and volume["status"].get("headSeq") == head else None

    volume = wait_for(caught_up, 15, "status to show the new commit")
    assert_status_matches_store(volume, local)
    assert (volume["status"]["files"], volume["status"]["bytes"]) == (2, 5005)
    assert volume["status"]["writers"] == 1
    assert volume["status"]["lastCommitTime"]

    # The pods of the examples use the volumes both ways.
    reader = cluster.get_json("pod", "-n", ns, "reader")
    assert reader["spec"]["volumes"][0]["csi"]["volumeAttributes"]["volume"] == "datasets"
    writer = cluster.get_json("pod", "-n", ns, "writer")
    assert writer["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "scratch"
    examples = tmp_path / "examples"
    for doc in ("pod-inline.yaml", "pod-pvc.yaml", "volumes.yaml", "volume-s3.yaml"):
        cluster.kubectl("delete", "-f", str(examples / doc), "--wait=false")


def test_retain_keeps_the_data_and_a_new_volume_adopts_it(
    cluster: Cluster, operator: Operator, namespace: str, default_store: Path, tmp_path: Path
) -> None:
    store = FilesystemStore(default_store)
    cluster.apply(volume_yaml("keep"), namespace)
    volume = wait_ready(cluster, namespace, "keep")
    volume_id = volume["status"]["volumeId"]
    write_files(store, volume_id, tmp_path / "wc", {"kept.txt": b"still here"})
    cluster.kubectl("delete", "volume", "-n", namespace, "keep", "--timeout=30s")
    assert get_volume(cluster, namespace, "keep") is None
    assert Catalog.for_namespace(store, namespace).lookup("keep").id == volume_id
    assert Repo(store, volume_id).stats().files == 1
    # The claim and PV the operator made are released (a controller-manager would finish
    # the claim's deletion; here it keeps its protection finalizer).
    pvc = cluster.get_json("pvc", "-n", namespace, "keep")
    assert pvc is None or pvc["metadata"].get("deletionTimestamp")
    # Applying the same name again finds the retained data.
    cluster.apply(volume_yaml("keep"), namespace)
    again = wait_ready(cluster, namespace, "keep", timeout=60)
    assert again["status"]["volumeId"] == volume_id
    assert again["status"]["files"] == 1


POD = """
apiVersion: v1
kind: Pod
metadata: {{name: {pod}}}
spec:
  containers: [{{name: main, image: busybox}}]
  volumes:
    - name: v
      {source}
"""


@pytest.mark.parametrize(
    "source",
    [
        "persistentVolumeClaim: {claimName: gone}",
        "csi: {driver: csi.kvol.dev, volumeAttributes: {volume: gone}}",
    ],
    ids=["claim", "inline"],
)
def test_delete_removes_data_only_after_no_pod_mounts_it(
    cluster: Cluster,
    operator: Operator,
    namespace: str,
    default_store: Path,
    tmp_path: Path,
    source: str,
) -> None:
    store = FilesystemStore(default_store)
    cluster.apply(volume_yaml("gone", reclaimPolicy="Delete"), namespace)
    volume = wait_ready(cluster, namespace, "gone")
    volume_id = volume["status"]["volumeId"]
    write_files(store, volume_id, tmp_path / "wc", {"f": b"data"})
    cluster.apply(POD.format(pod="user", source=source), namespace)
    cluster.kubectl("delete", "volume", "-n", namespace, "gone", "--wait=false")
    blocked = wait_condition(cluster, namespace, "gone", "Ready", "False", "InUse")
    assert blocked["status"]["phase"] == "Terminating"
    assert "user" in condition(blocked, "Ready")["message"]
    time.sleep(2)  # a few retries later, still there
    assert get_volume(cluster, namespace, "gone") is not None
    assert Repo(store, volume_id).exists()
    cluster.kubectl("delete", "pod", "-n", namespace, "user", "--wait=true", "--timeout=30s")
    wait_gone(cluster, "volume", "-n", namespace, "gone")
    assert not Repo(store, volume_id).exists()
    assert not list(store.list(f"volumes/{volume_id}/"))
    with pytest.raises(NotFound):
        Catalog.for_namespace(store, namespace).lookup("gone")
    assert cluster.get_json("pv", f"kvol-{volume_id}") is None or cluster.get_json(
        "pv", f"kvol-{volume_id}"
    )["metadata"].get("deletionTimestamp")


def test_filesystem_backend_outage_shows_and_recovers(
    cluster: Cluster, operator: Operator, namespace: str, tmp_path: Path
) -> None:
    path = tmp_path / "share"
    path.mkdir()
    name = f"share-{namespace}"
    cluster.kubectl("apply", "-f", "-", input=_backend_yaml(name, path))
    cluster.apply(volume_yaml("v", backend=name), namespace)
    wait_ready(cluster, namespace, "v")
    # The share disappears (an NFS mount gone): nothing may be created in its place.
    path.rename(tmp_path / "away")
    down = wait_condition(
        cluster, namespace, "v", "BackendReachable", "False", "BackendUnreachable"
    )
    assert "not mounted" in condition(down, "BackendReachable")["message"]
    assert condition(down, "Ready")["status"] == "False"
    assert not path.exists()
    backend = wait_for(
        lambda: (
            (b := cluster.get_json("volumebackend", name))
            and b["status"].get("phase") == "Unreachable"
            and b
        ),
        15,
        "the backend to show Unreachable",
    )
    assert "not mounted" in backend["status"]["message"]
    wait_event(cluster, namespace, "v", ("Warning", "BackendUnreachable"))
    (tmp_path / "away").rename(path)
    up = wait_condition(cluster, namespace, "v", "BackendReachable", "True", timeout=30)
    assert condition(up, "Ready")["status"] == "True"
    assert up["status"]["phase"] == "Ready"
    wait_for(
        lambda: cluster.get_json("volumebackend", name)["status"]["phase"] == "Ready",
        15,
        "the backend to be Ready again",
    )


def test_s3_backend_outage_shows_and_recovers(
    cluster: Cluster, operator: Operator, namespace: str, tmp_path: Path
) -> None:
    with start_minio(tmp_path / "minio") as server:
        bucket = server.create_bucket()
        name = f"s3-{namespace}"
        cluster.kubectl(
            "create",
            "secret",
            "generic",
            f"creds-{namespace}",
            "-n",
            "kvol-system",
            f"--from-literal=accessKeyId={ACCESS_KEY}",
            f"--from-literal=secretAccessKey={SECRET_KEY}",
        )
        cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=f"""
apiVersion: kvol.dev/v1alpha1
kind: VolumeBackend
metadata: {{name: {name}}}
spec:
  type: s3
  s3:
    bucket: {bucket}
    endpoint: {server.endpoint}
    credentialsSecretRef: {{name: creds-{namespace}}}
""",
        )
        cluster.apply(volume_yaml("v", backend=name), namespace)
        volume = wait_ready(cluster, namespace, "v")
        assert_status_matches_store(volume, server.store(bucket))
        server.kill()
        wait_condition(cluster, namespace, "v", "BackendReachable", "False", "BackendUnreachable")
        server.start()
        wait_condition(cluster, namespace, "v", "BackendReachable", "True", timeout=60)
        assert_status_matches_store(wait_ready(cluster, namespace, "v"), server.store(bucket))


def test_missing_backend_and_secret_converge_once_they_exist(
    cluster: Cluster, operator: Operator, namespace: str, tmp_path: Path
) -> None:
    name = f"later-{namespace}"
    cluster.apply(volume_yaml("v", backend=name), namespace)
    pending = wait_condition(cluster, namespace, "v", "Ready", "False", "BackendNotFound")
    assert pending["status"]["phase"] == "Pending"
    assert name in condition(pending, "Ready")["message"]
    path = tmp_path / "later"
    path.mkdir()
    cluster.kubectl("apply", "-f", "-", input=_backend_yaml(name, path))
    volume = wait_ready(cluster, namespace, "v", timeout=30)
    assert_status_matches_store(volume, FilesystemStore(path))


def test_operator_metrics_and_liveness(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    cluster.apply(volume_yaml("m"), namespace)
    wait_ready(cluster, namespace, "m")
    with urllib.request.urlopen(operator.liveness_url, timeout=5) as response:
        assert response.status == 200
    text = wait_for(
        lambda: (t := operator.metrics()) and 'kvol_operator_volumes{phase="Ready"}' in t and t,
        10,
        "volume phase metrics",
    )
    ready = re.search(r'^kvol_operator_volumes\{phase="Ready"\} (\S+)$', text, re.M)
    assert ready and float(ready.group(1)) >= 1
    ok = re.search(
        r'^kvol_operator_reconciles_total\{handler="apply",kind="Volume",result="ok"\} (\S+)$',
        text,
        re.M,
    )
    assert ok and float(ok.group(1)) >= 1
    assert "kvol_operator_reconcile_duration_seconds_bucket" in text
    assert 'kvol_store_requests_total{operation="put_if_absent"' in text


def test_operator_killed_mid_reconcile_converges(
    cluster: Cluster, default_store: Path, namespace: str, tmp_path: Path
) -> None:
    count = 60
    docs = "---\n".join(volume_yaml(f"v{i}") for i in range(count))
    op = Operator(cluster, tmp_path / "first")
    op.start()
    api = kubernetes.client.CustomObjectsApi(cluster.api)
    applying = subprocess.Popen(
        [
            cluster.kubectl_binary,
            f"--kubeconfig={cluster.kubeconfig}",
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert applying.stdin is not None
        applying.stdin.write(docs)
        applying.stdin.close()
        # Kill it as soon as the first volume has an id, while kubectl still creates the
        # rest: some are mid-way, some untouched.

        def started() -> bool:
            items = api.list_namespaced_custom_object("kvol.dev", "v1alpha1", namespace, "volumes")
            return any((v.get("status") or {}).get("volumeId") for v in items["items"])

        wait_for(started, 30, "reconciliation to be under way", interval=0.005)
        op.stop(signal.SIGKILL)
    finally:
        op.kill()
    assert applying.wait(timeout=60) == 0
    items = cluster.get_json("volumes", "-n", namespace)["items"]
    assert len(items) == count
    not_ready = [v for v in items if (v.get("status") or {}).get("phase") != "Ready"]
    assert not_ready, "the operator finished before it was killed: nothing was mid-way"
    again = Operator(cluster, tmp_path / "second")
    again.start()
    try:
        store = FilesystemStore(default_store)
        for i in range(count):
            volume = wait_ready(cluster, namespace, f"v{i}", timeout=60)
            assert_status_matches_store(volume, store)
        # Exactly one volume each: a retry reused the id it had persisted.
        names = {name for name, _ in Catalog.for_namespace(store, namespace).list()}
        assert names == {f"v{i}" for i in range(count)}
        ids = {
            v["status"]["volumeId"] for v in cluster.get_json("volumes", "-n", namespace)["items"]
        }
        in_store = {
            info.key.split("/")[1]
            for info in store.list("volumes/")
            if info.key.endswith("/meta.json")
        }
        assert ids <= in_store
        assert len(ids) == count
    finally:
        again.stop()
        print(f"--- operator log ---\n{again.log_tail(100)}")


def test_operator_restarted_keeps_status_true(
    cluster: Cluster, default_store: Path, namespace: str, tmp_path: Path
) -> None:
    """Changes made while the operator is down are reflected once it is back."""
    op = Operator(cluster, tmp_path / "first")
    op.start()
    try:
        cluster.apply(volume_yaml("r"), namespace)
        volume = wait_ready(cluster, namespace, "r")
    finally:
        op.stop()
    store = FilesystemStore(default_store)
    head = write_files(store, volume["status"]["volumeId"], tmp_path / "wc", {"x": b"1"})
    again = Operator(cluster, tmp_path / "second")
    again.start()
    try:
        wait_for(
            lambda: get_volume(cluster, namespace, "r")["status"].get("headSeq") == head,
            15,
            "the restarted operator to refresh status",
        )
    finally:
        again.stop()


def test_backend_in_use_is_not_deleted(
    cluster: Cluster, operator: Operator, namespace: str, tmp_path: Path
) -> None:
    path = tmp_path / "held"
    path.mkdir()
    name = f"held-{namespace}"
    cluster.kubectl("apply", "-f", "-", input=_backend_yaml(name, path))
    cluster.apply(volume_yaml("v", backend=name), namespace)
    wait_ready(cluster, namespace, "v")
    cluster.kubectl("delete", "volumebackend", name, "--wait=false")
    time.sleep(2)
    held = cluster.get_json("volumebackend", name)
    assert held is not None and held["metadata"].get("deletionTimestamp")
    assert FilesystemStore(path).exists(
        f"volumes/{get_volume(cluster, namespace, 'v')['status']['volumeId']}/meta.json"
    )
    cluster.kubectl("delete", "volume", "-n", namespace, "v", "--timeout=30s")
    wait_gone(cluster, "volumebackend", name)


def test_spec_the_store_refuses_is_a_permanent_failure(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    # A retained version-1 volume, then a version-2 Volume of the same name: the schema
    # accepts it, the store cannot, and retrying would not help.
    cluster.apply(volume_yaml("old", version=1), namespace)
    first = wait_ready(cluster, namespace, "old")
    cluster.kubectl("delete", "volume", "-n", namespace, "old", "--timeout=30s")
    cluster.apply(volume_yaml("old", version=2), namespace)
    failed = wait_condition(cluster, namespace, "old", "Ready", "False", "InvalidSpec")
    assert failed["status"]["phase"] == "Failed"
    assert "version 1, not 2" in condition(failed, "Ready")["message"]
    assert failed["status"]["volumeId"] == first["status"]["volumeId"]
    wait_event(cluster, namespace, "old", ("Warning", "InvalidSpec"))


def test_operator_works_with_the_shipped_rbac_only(
    cluster: Cluster, default_store: Path, namespace: str, tmp_path: Path
) -> None:
    """Run as the service account of manifests/rbac: every call it makes is allowed."""
    cluster.kubectl("apply", "-f", str(REPO / "manifests" / "rbac" / "controller.yaml"))
    token = cluster.kubectl(
        "create", "token", "kvol-controller", "-n", "kvol-system", "--duration=1h"
    ).stdout.strip()
    kubeconfig = cluster.kubeconfig_for(token, tmp_path / "kubeconfig")
    op = Operator(cluster, tmp_path / "operator", kubeconfig=kubeconfig)
    op.start()
    try:
        cluster.apply(volume_yaml("rbac", reclaimPolicy="Delete"), namespace)
        volume = wait_ready(cluster, namespace, "rbac")
        wait_event(cluster, namespace, "rbac", ("Normal", "Provisioned"))
        cluster.kubectl("delete", "volume", "-n", namespace, "rbac", "--timeout=30s")
        assert not Repo(FilesystemStore(default_store), volume["status"]["volumeId"]).exists()
        # Provisioning: it reads the StorageClass, makes the claim's Volume and deletes it
        # with the claim.
        apply_claim(cluster, namespace, "claimed", apply_storage_class(cluster, "Delete"))
        wait_ready(cluster, namespace, "claimed")
        wait_event(cluster, namespace, "claimed", ("Normal", "Provisioning"))
        cluster.kubectl("delete", "pvc", "-n", namespace, "claimed", "--wait=false")
        wait_gone(cluster, "volume", "-n", namespace, "claimed")
        log = op.log_tail(1000)
        assert "Forbidden" not in log and " 403" not in log, log
    finally:
        op.stop()


def test_backend_spec_the_operator_refuses_is_invalid(cluster: Cluster, operator: Operator) -> None:
    name = "no-host"
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=f"""
apiVersion: kvol.dev/v1alpha1
kind: VolumeBackend
metadata: {{name: {name}}}
spec:
  type: s3
  s3: {{bucket: abc, endpoint: "http://"}}
""",
    )
    backend = wait_for(
        lambda: (
            (b := cluster.get_json("volumebackend", name))
            and (b.get("status") or {}).get("phase") == "Invalid"
            and b
        ),
        15,
        "the backend to be Invalid",
    )
    (cond,) = backend["status"]["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == (
        "Reachable",
        "False",
        "BackendInvalid",
    )
    assert "endpoint" in cond["message"]
    cluster.kubectl("delete", "volumebackend", name)
