"""Deleting a Volume: its reclaim policy carried out before its finalizer may go."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from typing import Any

from kvol import errors
from kvol.operator import specs
from kvol.operator.backend_lookup import find_backend, reachable_store
from kvol.operator.failures import ReconcileError, classify
from kvol.operator.persistent_volumes import delete_pv_and_claim
from kvol.operator.resources import VolumeSpec
from kvol.operator.shared import Part
from kvol.operator.status import READY
from kvol.operator.volume_store import destroy


class VolumeFinalizer(Part):
    """Removes a deleted Volume's PV and claim, and its data under a Delete policy once no
    pod mounts it; then forgets the Volume."""

    def delete(self, body: Mapping[str, Any]) -> None:
        """Carry out the reclaim policy. Returns only when the finalizer may go."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        with self.locks.hold(f"{namespace}/{name}"):
            obj = self.kube.get_volume(namespace, name) or dict(body)
            status = self.status.current(obj)
            try:
                policy = VolumeSpec.parse(obj.get("spec") or {}).reclaim_policy
            except errors.InvalidArgument:
                policy = "Retain"  # when in doubt, keep the data
            volume_id = status.get("volumeId")
            try:
                self.status.write(obj, {"phase": "Terminating"})
                if policy == "Delete" and volume_id:
                    users = [
                        pod["metadata"]["name"]
                        for pod in self.kube.list_pods(namespace)
                        if specs.pod_uses_volume(pod, name)
                    ]
                    if users:
                        raise ReconcileError(
                            "InUse",
                            f"mounted by pod(s) {', '.join(sorted(users))}: the data is removed "
                            "once no pod has the volume mounted",
                            retry=True,
                            delay=self.settings.in_use_retry,
                        )
                delete_pv_and_claim(self.kube, namespace, name, volume_id)
                if policy == "Delete" and volume_id:
                    backend = find_backend(self.backends, status.get("backend") or "")
                    store = reachable_store(self.backends, backend)
                    destroy(store, namespace, name, volume_id)
                    self.emit(
                        obj,
                        "Normal",
                        "Deleted",
                        f"volume {volume_id} removed from backend {backend.name}",
                    )
                elif volume_id:
                    self.emit(
                        obj,
                        "Normal",
                        "Retained",
                        f"volume {volume_id} kept in backend {status.get('backend')}",
                    )
            except ReconcileError as exc:
                with suppress(errors.KvolError):
                    self.status.write(
                        obj, {"message": exc.message}, [(READY, False, exc.reason, exc.message)]
                    )
                raise
            except errors.KvolError as exc:
                raise ReconcileError("APIError", str(exc), retry=classify(exc)) from exc
            self.status.forget(meta["uid"])
            if volume_id:
                self.content.forget(volume_id)
