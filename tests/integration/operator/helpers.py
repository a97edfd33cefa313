"""Helpers shared by the operator's integration tests."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from kvol.catalog import Catalog
from kvol.repo import Repo
from kvol.store import Store
from kvol.workcopy import WorkingCopy
from tests.integration.operator.cluster import Cluster, wait_for


def volume_yaml(name: str, **spec: Any) -> str:
    lines = ["apiVersion: kvol.dev/v1alpha1", "kind: Volume", f"metadata: {{name: {name}}}"]
    if not spec:
        lines.append("spec: {}")
    else:
        lines.append("spec:")
        for key, value in spec.items():
            lines.append(f"  {key}: {value}")
    return "\n".join(lines) + "\n"


def get_volume(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = cluster.get_json("volume", "-n", namespace, name)
    return found


def condition(volume: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (volume.get("status") or {}).get("conditions") or ():
        if cond["type"] == type_:
            return dict(cond)
    return {}


def wait_ready(cluster: Cluster, namespace: str, name: str, timeout: float = 30) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        volume = get_volume(cluster, namespace, name)
        phase = (volume or {}).get("status", {}).get("phase")
        if volume and phase == "Ready" and condition(volume, "Ready").get("status") == "True":
            return volume
        return None

    return wait_for(ready, timeout, f"Volume {namespace}/{name} to be Ready")


def wait_condition(
    cluster: Cluster,
    namespace: str,
    name: str,
    type_: str,
    status: str,
    reason: str | None = None,
    timeout: float = 30,
) -> dict[str, Any]:
    def matches() -> dict[str, Any] | None:
        volume = get_volume(cluster, namespace, name)
        if volume is None:
            return None
        cond = condition(volume, type_)
        if cond.get("status") == status and (reason is None or cond.get("reason") == reason):
            return volume
        return None

    return wait_for(matches, timeout, f"{type_}={status} ({reason}) on {namespace}/{name}")


def wait_gone(cluster: Cluster, *args: str, timeout: float = 30) -> None:
    wait_for(lambda: cluster.get_json(*args) is None, timeout, f"{' '.join(args)} to be gone")


def events(cluster: Cluster, namespace: str, name: str) -> list[tuple[str, str]]:
    found = cluster.get_json(
        "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
    )
    return [(e["type"], e["reason"]) for e in (found or {}).get("items", [])]


def wait_event(
    cluster: Cluster, namespace: str, name: str, *wanted: tuple[str, str], timeout: float = 15
) -> list[tuple[str, str]]:
    """Wait until every ``(type, reason)`` in ``wanted`` was posted about ``name``.

    The operator posts events from a queue of its own, after the status patch that a test
    usually waits for, so reading them once right after would race.
    """

    def posted() -> list[tuple[str, str]] | None:
        seen = events(cluster, namespace, name)
        return seen if all(w in seen for w in wanted) else None

    return wait_for(posted, timeout, f"events {wanted} on {namespace}/{name}")


def assert_status_matches_store(volume: dict[str, Any], store: Store) -> None:
    """The status of a Ready Volume says what the store holds."""
    meta, status = volume["metadata"], volume["status"]
    entry = Catalog.for_namespace(store, meta["namespace"]).lookup(meta["name"])
    assert status["volumeId"] == entry.id
    assert entry.version == volume["spec"]["version"]
    stats = Repo(store, entry.id).stats()
    assert (status["files"], status["bytes"], status["headSeq"]) == (
        stats.files,
        stats.bytes,
        stats.head,
    )
    assert status["writers"] == stats.writers_recent


def write_files(store: Store, volume_id: str, workdir: Path, files: dict[str, bytes]) -> int:
    """Commit ``files`` into the volume as a pod would; returns the new head."""
    repo = Repo(store, volume_id)
    if workdir.exists():
        wc = WorkingCopy.open(workdir, store=store)
        wc.reload()
    else:
        wc = WorkingCopy.create(repo, workdir)
    for rel, data in files.items():
        path = workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    result = wc.commit("test")
    wc.close(final_commit=False)
    assert result.seq is not None
    return result.seq


def apply_storage_class(cluster: Cluster, reclaim: str, **parameters: str) -> str:
    """A StorageClass of kvol's provisioner with a unique name, which it returns."""
    name = f"kvol-{reclaim.lower()}-{secrets.token_hex(3)}"
    params = "".join(f"\n  {k}: {v!r}" for k, v in parameters.items())
    cluster.apply(
        f"""
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: {name}}}
provisioner: csi.kvol.dev
reclaimPolicy: {reclaim}
volumeBindingMode: Immediate
parameters: {{}}{params}
""".replace("parameters: {}\n  ", "parameters:\n  "),
    )
    return name


def apply_claim(cluster: Cluster, namespace: str, name: str, storage_class: str) -> dict[str, Any]:
    """A ReadWriteMany claim of ``storage_class``, as applied."""
    cluster.apply(
        f"""
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}}}
spec:
  storageClassName: {storage_class}
  accessModes: [ReadWriteMany]
  resources: {{requests: {{storage: 2Gi}}}}
""",
        namespace,
    )
    claim: dict[str, Any] = cluster.get_json("pvc", "-n", namespace, name)
    return claim
