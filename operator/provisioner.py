"""Dynamic provisioning: a PersistentVolumeClaim of a kvol StorageClass gets a Volume.

The operator is the provisioner of StorageClasses whose ``provisioner`` is the CSI driver
(``csi.kvol.dev``). For a pending claim of such a class it creates a Volume named like
the claim, in its namespace, marked with the claim's uid; reconciling that Volume makes a
PersistentVolume pre-bound to the claim (``claimRef`` with its uid), which the
PersistentVolume controller binds, as it does for any external provisioner. Deleting the
claim deletes the Volume, whose reclaim policy (the class's) then keeps or removes the data.

Class parameters: ``backend``, ``version``, ``autocommitIntervalSeconds``; the claim gives
the access modes and the size. Pure functions here; claim_provisioning.py calls them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvol import errors
from kvol.operator.crds import MAX_VOLUME_NAME
from kvol.operator.resources import (
    ACCESS_MODES,
    API_VERSION,
    CSI_DRIVER,
    MANAGED_BY,
    VolumeSpec,
)

#: On a Volume made for a claim: the claim's name, uid and class.
CLAIM_ANNOTATION = "kvol.dev/claim"
CLAIM_UID_ANNOTATION = "kvol.dev/claim-uid"
STORAGE_CLASS_ANNOTATION = "kvol.dev/storage-class"
#: What the PersistentVolume controller and provisioners write on a claim and a PV.
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"

Obj = dict[str, Any]


def is_ours(storage_class: Mapping[str, Any] | None) -> bool:
    return bool(storage_class) and (storage_class or {}).get("provisioner") == CSI_DRIVER


def wants_volume(claim: Mapping[str, Any]) -> bool:
    """A claim still waiting for a volume (not bound, not being deleted)."""
    meta, spec = claim["metadata"], claim.get("spec") or {}
    return not meta.get("deletionTimestamp") and not spec.get("volumeName")


def volume_for_claim(claim: Mapping[str, Any], storage_class: Mapping[str, Any]) -> Obj:
    """The Volume that serves ``claim``; raises InvalidArgument for a claim kvol cannot serve."""
    meta, spec = claim["metadata"], claim.get("spec") or {}
    name = meta["name"]
    if len(name) > MAX_VOLUME_NAME:
        raise errors.InvalidArgument(
            f"claim name {name!r} is longer than {MAX_VOLUME_NAME} characters, the longest "
            "Volume name: use a shorter claim name"
        )
    if spec.get("volumeMode", "Filesystem") != "Filesystem":
        raise errors.InvalidArgument("kvol volumes are file systems: volumeMode must be Filesystem")
    if spec.get("dataSource") or spec.get("dataSourceRef"):
        raise errors.InvalidArgument("kvol cannot populate a claim from a data source")
    modes = [m for m in spec.get("accessModes") or ["ReadWriteMany"] if m in ACCESS_MODES]
    params = storage_class.get("parameters") or {}
    volume_spec: Obj = {
        "reclaimPolicy": storage_class.get("reclaimPolicy") or "Delete",
        "accessModes": modes or ["ReadWriteMany"],
    }
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    if size:
        volume_spec["size"] = str(size)
    if params.get("backend"):
        volume_spec["backend"] = str(params["backend"])
    for key in ("version", "autocommitIntervalSeconds"):
        if key in params:
            try:
                volume_spec[key] = int(str(params[key]))
            except ValueError as exc:
                raise errors.InvalidArgument(
                    f"StorageClass parameter {key} must be an integer, not {params[key]!r}"
                ) from exc
    VolumeSpec.parse(volume_spec)  # what the schema would refuse, refused here with a reason
    return {
        "apiVersion": API_VERSION,
        "kind": "Volume",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": dict(MANAGED_BY),
            "annotations": {
                CLAIM_ANNOTATION: name,
                CLAIM_UID_ANNOTATION: meta["uid"],
                STORAGE_CLASS_ANNOTATION: storage_class["metadata"]["name"],
            },
        },
        "spec": volume_spec,
    }


def claim_of(volume: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(claim name, uid, class) of a Volume made for a claim; None for any other Volume."""
    annotations = volume["metadata"].get("annotations") or {}
    uid = annotations.get(CLAIM_UID_ANNOTATION)
    if not uid:
        return None
    return (
        annotations.get(CLAIM_ANNOTATION) or volume["metadata"]["name"],
        uid,
        annotations.get(STORAGE_CLASS_ANNOTATION, ""),
    )
