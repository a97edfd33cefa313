"""Bringing a Volume to Ready, and keeping its status true.

Every step is idempotent, so the same method serves creation, resumption after an
operator restart, updates, and the periodic level-based pass.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kvol import errors
from kvol.operator import specs
from kvol.operator.backend_lookup import find_backend, reachable_store
from kvol.operator.failures import ReconcileError
from kvol.operator.persistent_volumes import ensure_pv_and_claim
from kvol.operator.resources import VolumeSpec
from kvol.operator.shared import Part
from kvol.operator.status import REACHABLE, READY, Condition, Obj
from kvol.operator.volume_store import (
    create_in_store,
    retained_id,
    write_retention,
    write_volume_settings,
)
from kvol.repo import new_volume_id

log = logging.getLogger(__name__)


class VolumeReconciler(Part):
    """Provisions Volumes (volume id, store entry, PV and claim) and refreshes their status."""

    def reconcile(self, body: Mapping[str, Any], *, fresh: bool = False) -> Obj | None:
        """Bring one Volume to Ready: volume id, store entry, PV and claim, status.

        ``body`` is what kopf last saw; the status this process wrote since takes
        precedence over its status, so a retry never picks a second volume id. ``fresh``
        reads the object from the API server first.
        """
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        with self.locks.hold(f"{namespace}/{name}"):
            obj = self.kube.get_volume(namespace, name) if fresh else dict(body)
            if obj is None or obj["metadata"].get("deletionTimestamp"):
                return None
            status = self.status.current(obj)
            try:
                return self._provision(obj, status)
            except ReconcileError as exc:
                self._record_failure(obj, status, exc)
                raise

    def refresh(self, body: Mapping[str, Any]) -> Obj | None:
        """The periodic, level-based pass: provision what is not, refresh content status."""
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return None
        status = self.status.current(body)
        provisioned = status.get("phase") == "Ready" and status.get("volumeId")
        if not provisioned or status.get("observedGeneration") != meta.get("generation"):
            if status.get("phase") == "Failed" and status.get("observedGeneration") == meta.get(
                "generation"
            ):
                return None  # an invalid spec stays invalid until it is changed
            return self.reconcile(body)
        with self.locks.hold(f"{meta['namespace']}/{meta['name']}"):
            status = self.status.current(body)
            try:
                backend = find_backend(self.backends, status.get("backend") or "")
                store = reachable_store(self.backends, backend)
                stats = self.content.read(store, status["volumeId"])
            except ReconcileError as exc:
                self._record_failure(dict(body), status, exc)
                raise
            return self.status.write(
                body,
                specs.stats_status(stats.stats, stats.pods),
                [
                    (REACHABLE, True, "Reachable", f"backend {backend.name} answers"),
                    (
                        READY,
                        True,
                        "Provisioned",
                        f"volume {status['volumeId']} in backend {backend.name}",
                    ),
                ],
            )

    def _record_failure(self, obj: Obj, status: Obj, exc: ReconcileError) -> None:
        changes: Obj = {"phase": status.get("phase") or "Pending", "message": exc.message}
        if not exc.retry:
            # Nothing changes until the spec does: the periodic pass skips this generation.
            changes.update(phase="Failed", observedGeneration=obj["metadata"].get("generation"))
        conditions: list[Condition] = [(READY, False, exc.reason, exc.message)]
        if exc.reason == "BackendUnreachable":
            conditions.append((REACHABLE, False, exc.reason, exc.message))
        try:
            self.status.write(obj, changes, conditions)
        except errors.KvolError as write_error:
            log.warning("could not record %s on %s: %s", exc.reason, _ref(obj), write_error)

    def _provision(self, obj: Obj, status: Obj) -> Obj:
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            spec = VolumeSpec.parse(obj.get("spec") or {})
        except errors.InvalidArgument as exc:
            raise ReconcileError("InvalidSpec", str(exc), retry=False) from exc
        # The backend chosen at creation stays, even if the default changes later.
        backend = find_backend(self.backends, status.get("backend") or spec.backend)
        self.status.place(meta["uid"], backend.name)
        store = reachable_store(self.backends, backend)
        volume_id = status.get("volumeId")
        if not volume_id:
            volume_id = retained_id(store, namespace, name) or new_volume_id()
            # Persist the id before anything is written to the store: a retry after a
            # crash finds it here and writes the same volume again, never a second one.
            status = self.status.write(
                obj,
                {
                    "phase": status.get("phase") or "Pending",
                    "volumeId": volume_id,
                    "backend": backend.name,
                    "claimName": specs.claim_name(name),
                    "persistentVolumeName": specs.pv_name(volume_id),
                },
            )
        # Before the name exists: no pod can mount the volume without its settings.
        write_volume_settings(store, volume_id, spec)
        write_retention(store, volume_id, spec)
        create_in_store(store, namespace, name, spec, volume_id)
        ensure_pv_and_claim(self.kube, obj, spec, volume_id, backend.name)
        stats = self.content.read(store, volume_id)
        return self.status.write(
            obj,
            {
                "phase": "Ready",
                "message": None,
                "observedGeneration": meta.get("generation"),
                **specs.stats_status(stats.stats, stats.pods),
            },
            [
                (REACHABLE, True, "Reachable", f"backend {backend.name} answers"),
                (READY, True, "Provisioned", f"volume {volume_id} in backend {backend.name}"),
            ],
        )


def _ref(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"
