"""The PersistentVolumeClaims of kvol StorageClasses as the operator sees them: a pending
one gets its Volume, a deleted one takes its Volume along (see provisioner.py)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kvol import errors
from kvol.operator import provisioner
from kvol.operator.kube import Kube
from kvol.operator.provisioner import claim_of
from kvol.operator.status import EventSink

log = logging.getLogger(__name__)


class ClaimProvisioner:
    """Makes and removes the Volumes of claims of kvol StorageClasses."""

    def __init__(self, kube: Kube, emit: EventSink) -> None:
        self.kube = kube
        self.emit = emit

    def provision(self, claim: Mapping[str, Any], *, deleted: bool = False) -> None:
        """Give a pending claim of a kvol StorageClass its Volume; remove the Volume with
        its claim (the Volume's reclaim policy, the class's, then keeps or removes the
        data). Claims of other classes, and Volumes not made for this claim, are left alone."""
        meta = claim["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        class_name = (claim.get("spec") or {}).get("storageClassName")
        if not class_name:
            return
        storage_class = self.kube.get_storage_class(class_name)
        if storage_class is None or not provisioner.is_ours(storage_class):
            return
        volume = self.kube.get_volume(namespace, name)
        made_for = claim_of(volume) if volume is not None else None
        mine = made_for is not None and made_for[1] == meta["uid"]
        if deleted or meta.get("deletionTimestamp"):
            if volume is not None and mine and not volume["metadata"].get("deletionTimestamp"):
                self.kube.delete_volume(namespace, name)
                log.info("claim %s/%s deleted: deleting its Volume", namespace, name)
            return
        if not provisioner.wants_volume(claim):
            return
        if volume is not None:
            if not mine:
                self.emit(
                    claim,
                    "Warning",
                    "ProvisioningFailed",
                    f"a Volume named {name} exists that was not made for this claim: "
                    "delete it or give the claim another name",
                )
            return
        try:
            body = provisioner.volume_for_claim(claim, storage_class)
        except errors.InvalidArgument as exc:
            self.emit(claim, "Warning", "ProvisioningFailed", str(exc))
            return
        try:
            self.kube.create_volume(body)
        except errors.Conflict:
            return  # made meanwhile (an earlier event of the same claim)
        self.emit(
            claim,
            "Normal",
            "Provisioning",
            f"Volume {name} created for this claim (StorageClass {class_name})",
        )
