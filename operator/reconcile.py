"""Reconciliation of Volumes and VolumeBackends, without kopf.

:class:`Reconciler` is what the kopf handlers (handlers.py) call: one object that owns
the state every reconciliation shares (the status the operator last wrote, the content
status of each volume, one lock per object) and hands each call to the part that does
that job: provisioning and refreshing a Volume (volume_apply.py), deleting one
(volume_delete.py), its retention passes (retention_passes.py), the Volumes of claims
(claim_provisioning.py), and VolumeBackends (backend_reconcile.py).

Every step is idempotent, so the same function serves creation, resumption after an
operator restart, updates, and the periodic level-based pass. Failures come out as
:class:`ReconcileError` with a condition reason and whether retrying can help; the kopf
layer turns that into a temporary or a permanent error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvol.operator.backend_reconcile import BackendReconciler
from kvol.operator.claim_provisioning import ClaimProvisioner
from kvol.operator.content import MAX_PODS_LISTED, ContentCache, content_stats
from kvol.operator.failures import ReconcileError, classify
from kvol.operator.kube import Kube
from kvol.operator.locks import KeyedLocks
from kvol.operator.registry import Backends
from kvol.operator.retention_passes import RetentionPasses
from kvol.operator.settings import Settings
from kvol.operator.shared import Shared
from kvol.operator.status import REACHABLE, READY, Condition, EventSink, Obj, StatusBook
from kvol.operator.volume_apply import VolumeReconciler
from kvol.operator.volume_delete import VolumeFinalizer
from kvol.operator.volume_store import CATALOG_OWNER, create_in_store, destroy, retained_id

__all__ = [
    "CATALOG_OWNER",
    "MAX_PODS_LISTED",
    "REACHABLE",
    "READY",
    "Condition",
    "EventSink",
    "KeyedLocks",
    "Obj",
    "ReconcileError",
    "Reconciler",
    "Settings",
    "classify",
    "content_stats",
]


class Reconciler:
    """Every reconciliation of the operator, over state shared between them."""

    def __init__(self, kube: Kube, backends: Backends, settings: Settings, emit: EventSink) -> None:
        self.kube = kube
        self.backends = backends
        self.settings = settings
        self.emit = emit
        self.locks = KeyedLocks()
        self.status = StatusBook(kube, emit)
        self.content = ContentCache(settings)
        shared = Shared(kube, backends, settings, emit, self.locks, self.status, self.content)
        self.volumes = VolumeReconciler(shared)
        self.finalizer = VolumeFinalizer(shared)
        self.retention = RetentionPasses(shared)
        self.claims = ClaimProvisioner(kube, emit)
        self.backend_objects = BackendReconciler(shared)

    # The store steps of a Volume, where tests of the store's catalog reach them.
    _retained_id = staticmethod(retained_id)
    _create_in_store = staticmethod(create_in_store)
    _destroy = staticmethod(destroy)

    def forget(self, uid: str, volume_id: str | None = None) -> None:
        self.status.forget(uid)
        if volume_id:
            self.content.forget(volume_id)

    def volumes_on(self, backend: str) -> int:
        return self.status.volumes_on(backend)

    def reconcile_volume(self, body: Mapping[str, Any], *, fresh: bool = False) -> Obj | None:
        return self.volumes.reconcile(body, fresh=fresh)

    def refresh_volume(self, body: Mapping[str, Any]) -> Obj | None:
        return self.volumes.refresh(body)

    def retention_due(self, body: Mapping[str, Any], now: float | None = None) -> bool:
        return self.retention.due(body, now)

    def retention_pass(self, body: Mapping[str, Any]) -> Obj | None:
        return self.retention.run(body)

    def provision_claim(self, claim: Mapping[str, Any], *, deleted: bool = False) -> None:
        self.claims.provision(claim, deleted=deleted)

    def delete_volume(self, body: Mapping[str, Any]) -> None:
        self.finalizer.delete(body)

    def reconcile_backend(self, body: Mapping[str, Any], *, periodic: bool = False) -> Obj | None:
        return self.backend_objects.reconcile(body, periodic=periodic)

    def delete_backend(self, body: Mapping[str, Any]) -> None:
        self.backend_objects.delete(body)
