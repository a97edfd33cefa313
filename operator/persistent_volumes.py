"""The PersistentVolume and claim of each Volume: made, or adopted when kvol made them for
the same Volume before, and removed with it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kvol import errors
from kvol.operator import specs
from kvol.operator.failures import ReconcileError, classify
from kvol.operator.kube import Kube
from kvol.operator.provisioner import claim_of
from kvol.operator.resources import MANAGED_BY, VOLUME_LABEL, VolumeSpec

Obj = dict[str, Any]


def ensure_pv_and_claim(
    kube: Kube, obj: Obj, spec: VolumeSpec, volume_id: str, backend: str
) -> None:
    """Make or adopt the Volume's PersistentVolume, and its claim unless the Volume was
    made for a user's claim."""
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    claim = claim_of(obj)
    pv = specs.build_pv_spec(
        namespace=namespace,
        name=name,
        volume_id=volume_id,
        backend=backend,
        spec=spec,
        claim=claim,
    )
    pvc = specs.build_pvc_spec(volume=obj, volume_id=volume_id, spec=spec)
    try:
        create_or_adopt(
            pv,
            kube.create_pv,
            lambda: kube.get_pv(pv["metadata"]["name"]),
            namespace,
            name,
        )
        if claim is not None:
            return  # the user's claim, which the PV controller binds to this PV
        create_or_adopt(
            pvc,
            kube.create_pvc,
            lambda: kube.get_pvc(namespace, pvc["metadata"]["name"]),
            namespace,
            name,
        )
    except errors.KvolError as exc:
        raise ReconcileError("APIError", str(exc), retry=classify(exc)) from exc


def create_or_adopt(
    body: Obj,
    create: Callable[[Obj], Obj],
    get: Callable[[], Obj | None],
    namespace: str,
    name: str,
) -> None:
    """Create ``body``, or accept the object of its name if kvol made it for this Volume."""
    try:
        create(body)
        return
    except errors.Conflict:
        existing = get()
    if existing is None:
        raise errors.Conflict(f"{body['kind']} {body['metadata']['name']} is being deleted")
    labels = existing["metadata"].get("labels") or {}
    if labels.get(VOLUME_LABEL) != name or labels.get(f"{VOLUME_LABEL}-namespace") != namespace:
        raise ReconcileError(
            "ClaimConflict",
            f"a {existing['kind'] if 'kind' in existing else body['kind']} named "
            f"{body['metadata']['name']} exists that kvol did not make for this Volume: "
            "delete or rename it",
            retry=True,
            delay=30,
        )


def delete_pv_and_claim(kube: Kube, namespace: str, name: str, volume_id: str | None) -> None:
    """Delete those of them that kvol made for this Volume; others are left alone."""
    pvc = kube.get_pvc(namespace, specs.claim_name(name))
    if pvc is not None and _ours(pvc, namespace, name):
        kube.delete_pvc(namespace, specs.claim_name(name))
    if volume_id:
        pv = kube.get_pv(specs.pv_name(volume_id))
        if pv is not None and _ours(pv, namespace, name):
            kube.delete_pv(specs.pv_name(volume_id))


def _ours(obj: Mapping[str, Any], namespace: str, name: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return (
        labels.get(VOLUME_LABEL) == name
        and labels.get(f"{VOLUME_LABEL}-namespace") == namespace
        and all(labels.get(k) == v for k, v in MANAGED_BY.items())
    )
