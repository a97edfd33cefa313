"""Pure builders of the objects and status the operator writes: plain dicts, no cluster.

Handlers call these and send the result; unit tests call them directly.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from kvol.operator.resources import (
    API_VERSION,
    CSI_DRIVER,
    MANAGED_BY,
    VOLUME_LABEL,
    VolumeSpec,
)
from kvol.repo import RepoStats
from kvol.retention import PruneReport, RetentionPolicy, StorageUsage


def pv_name(volume_id: str) -> str:
    """A PersistentVolume per volume id: cluster-unique and stable across retries."""
    return f"kvol-{volume_id}"


def claim_name(volume_name: str) -> str:
    """The claim is named like its Volume, so pods write ``claimName: <volume>``."""
    return volume_name


def _labels(namespace: str, name: str) -> dict[str, str]:
    return {**MANAGED_BY, VOLUME_LABEL: name, f"{VOLUME_LABEL}-namespace": namespace}


def owner_reference(volume: Mapping[str, Any]) -> dict[str, Any]:
    meta = volume["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": "Volume",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        # The operator removes the claim itself, after its reclaim policy ran.
        "blockOwnerDeletion": False,
    }


def build_pv_spec(
    *,
    namespace: str,
    name: str,
    volume_id: str,
    backend: str,
    spec: VolumeSpec,
    claim: tuple[str, str, str] | None = None,
) -> dict[str, Any]:
    """A PersistentVolume pre-bound to the Volume's claim, served by the kvol CSI driver.

    ``claim`` is (name, uid, StorageClass) of the claim a Volume was provisioned for;
    otherwise the claim is the one the operator makes, named like the Volume, of no class.
    Its reclaim policy is always Retain: the Volume's own policy is carried out by the
    operator, which knows when no pod has the volume mounted any more.
    """
    claim_ref: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "namespace": namespace,
        "name": claim[0] if claim else claim_name(name),
    }
    metadata: dict[str, Any] = {"name": pv_name(volume_id), "labels": _labels(namespace, name)}
    if claim:
        claim_ref["uid"] = claim[1]
        metadata["annotations"] = {"pv.kubernetes.io/provisioned-by": CSI_DRIVER}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": metadata,
        "spec": {
            "capacity": {"storage": spec.size},
            "accessModes": list(spec.access_modes),
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": claim[2] if claim else "",
            "volumeMode": "Filesystem",
            "claimRef": claim_ref,
            "csi": {
                "driver": CSI_DRIVER,
                "volumeHandle": volume_id,
                "volumeAttributes": {"volume": name, "namespace": namespace, "backend": backend},
            },
        },
    }


def build_pvc_spec(
    *,
    volume: Mapping[str, Any],
    volume_id: str,
    spec: VolumeSpec,
) -> dict[str, Any]:
    """The claim pods use through ``persistentVolumeClaim``, bound to the volume's PV."""
    meta = volume["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": claim_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": _labels(meta["namespace"], meta["name"]),
            "ownerReferences": [owner_reference(volume)],
        },
        "spec": {
            "accessModes": list(spec.access_modes),
            "resources": {"requests": {"storage": spec.size}},
            # Empty, not absent: no default StorageClass may provision something else.
            "storageClassName": "",
            "volumeMode": "Filesystem",
            "volumeName": pv_name(volume_id),
        },
    }


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    *,
    generation: int | None = None,
    now: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Conditions with ``type_`` set; and whether its status flipped (an event is due).

    ``lastTransitionTime`` moves only when the status changes, as Kubernetes conventions
    ask; a new reason or message alone keeps it.
    """
    wanted = "True" if status else "False"
    stamp = now or now_rfc3339()
    result: list[dict[str, Any]] = []
    found, flipped = False, True
    for old in conditions or ():
        cond = dict(old)
        if cond.get("type") == type_:
            found = True
            flipped = cond.get("status") != wanted
            cond.update(status=wanted, reason=reason, message=message)
            if flipped or "lastTransitionTime" not in cond:
                cond["lastTransitionTime"] = stamp
            if generation is not None:
                cond["observedGeneration"] = generation
        result.append(cond)
    if not found:
        cond = {
            "type": type_,
            "status": wanted,
            "reason": reason,
            "message": message,
            "lastTransitionTime": stamp,
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        result.append(cond)
    return result, flipped


def condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in status.get("conditions") or ():
        if cond.get("type") == type_:
            return dict(cond)
    return None


def stats_status(stats: RepoStats, pods: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The status fields that describe the volume's content and its recent writers."""
    return {
        # None removes the field (a merge patch): no pod committed lately.
        "pods": [dict(p) for p in pods] or None,
        "files": stats.files,
        "bytes": stats.bytes,
        "size": human_bytes(stats.bytes),
        "headSeq": stats.head,
        "lastCommitTime": rfc3339(stats.last_commit_time)
        if stats.last_commit_time is not None
        else None,
        "writers": stats.writers_recent,
    }


def retention_status(
    policy: RetentionPolicy,
    pruned: PruneReport | None,
    bytes_freed: int,
    usage: StorageUsage,
    *,
    now: str | None = None,
) -> dict[str, Any]:
    """status.retention after a retention pass (``pruned`` None: nothing was pruned or
    collected, the volume keeps every commit). Every key is always there, an absent one
    as None, which a merge patch removes (an earlier error, for one)."""
    return {
        "policy": policy.describe(),
        "horizon": pruned.horizon if pruned else 0,
        "lastRun": now or now_rfc3339(),
        "prunedCommits": pruned.entries_deleted if pruned else 0,
        "waitingCommits": pruned.entries_waiting if pruned else 0,
        "bytesFreed": bytes_freed,
        "headBytes": usage.head_bytes,
        "storedBytes": usage.stored_bytes,
        "error": None,
    }


def pruned_message(
    policy: RetentionPolicy, pruned: PruneReport, bytes_freed: int, usage: StorageUsage
) -> str:
    """The Event of a retention pass that deleted anything or moved the horizon."""
    waiting = (
        f"; {pruned.entries_waiting:,} older commit(s) go once their grace has passed"
        if pruned.entries_waiting
        else ""
    )
    return (
        f"retained history begins at commit {pruned.horizon} ({policy.describe()}); "
        f"deleted {pruned.entries_deleted:,} commit(s) and {human_bytes(bytes_freed)} of "
        f"content{waiting}; {human_bytes(usage.stored_bytes)} stored, "
        f"{human_bytes(usage.head_bytes)} in the newest commit"
    )


def pod_uses_volume(pod: Mapping[str, Any], volume_name: str) -> bool:
    """Whether a pod mounts the volume, inline through the CSI driver or by its claim."""
    phase = (pod.get("status") or {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        return False  # its containers are gone; the node plugin already committed
    for vol in (pod.get("spec") or {}).get("volumes") or ():
        csi = vol.get("csi")
        attributes = (csi or {}).get("volumeAttributes") or {}
        if csi and csi.get("driver") == CSI_DRIVER and attributes.get("volume") == volume_name:
            return True
        pvc = vol.get("persistentVolumeClaim")
        if pvc and pvc.get("claimName") == claim_name(volume_name):
            return True
    return False
