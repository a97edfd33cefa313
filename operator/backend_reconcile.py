"""VolumeBackends: their status (reachability, Volume count, default marking) checked and
written, and their deletion held back while Volumes keep data in them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvol import errors
from kvol.operator import metrics, specs
from kvol.operator.backend_lookup import find_backend, reachable_store
from kvol.operator.backends import store_url
from kvol.operator.failures import ReconcileError, classify
from kvol.operator.shared import Part
from kvol.operator.status import Condition, Obj


class BackendReconciler(Part):
    """Checks VolumeBackends, writes their status, and guards their deletion."""

    def reconcile(self, body: Mapping[str, Any], *, periodic: bool = False) -> Obj | None:
        """Check a backend and write its status; raise when it is invalid or unreachable."""
        meta = body["metadata"]
        name = meta["name"]
        self.backends.observe(body)
        with self.locks.hold(f"backend/{name}"):
            status = self.status.current(body)
            if (
                periodic
                and status.get("phase") == "Invalid"
                and status.get("observedGeneration") == meta.get("generation")
            ):
                return None  # an invalid spec stays invalid until it is changed
            changes: Obj = {
                "observedGeneration": meta.get("generation"),
                "volumes": self.status.volumes_on(name),
            }
            error: ReconcileError | None = None
            try:
                backend = find_backend(self.backends, name)
                changes["url"] = store_url(backend.spec)
                reachable_store(self.backends, backend)
                changes.update(phase="Ready", message=None)
                cond: Condition = ("Reachable", True, "Reachable", "the store answers")
            except ReconcileError as exc:
                invalid = exc.reason == "BackendInvalid"
                # Retrying an invalid spec cannot help; an unreachable store may come back.
                error = ReconcileError(exc.reason, exc.message, retry=not invalid)
                changes.update(phase="Invalid" if invalid else "Unreachable", message=exc.message)
                cond = ("Reachable", False, exc.reason, exc.message)
            new = {**status, **changes}
            new["conditions"], flipped = specs.set_condition(
                status.get("conditions"), *cond, generation=meta.get("generation")
            )
            defaults = self.backends.defaults()
            if len(defaults) > 1 and name in defaults:
                new["conditions"], _ = specs.set_condition(
                    new["conditions"],
                    "Default",
                    False,
                    "MultipleDefaults",
                    f"backends {', '.join(defaults)} are all marked default: mark one",
                )
            patch = {k: v for k, v in new.items() if status.get(k) != v}
            if patch:
                self.kube.patch_backend_status(name, patch)
                self.status.remember(meta["uid"], new)
            if flipped:
                metrics.EVENTS.labels("VolumeBackend", cond[2]).inc()
                self.emit(body, "Normal" if cond[1] else "Warning", cond[2], cond[3])
            if error is not None:
                raise error
            return new

    def delete(self, body: Mapping[str, Any]) -> None:
        """A backend goes only when no Volume keeps data in it (its Volumes could not be
        reached, nor deleted with their reclaim policy, without it)."""
        name = body["metadata"]["name"]
        try:
            users = sorted(
                f"{v['metadata']['namespace']}/{v['metadata']['name']}"
                for v in self.kube.list_volumes()
                if (v.get("status") or {}).get("backend") == name
            )
        except errors.KvolError as exc:
            raise ReconcileError("APIError", str(exc), retry=classify(exc)) from exc
        if users:
            shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
            raise ReconcileError(
                "InUse",
                f"VolumeBackend {name} still holds {len(users)} Volume(s): {shown}",
                retry=True,
                delay=self.settings.in_use_retry,
            )
        self.backends.forget(name)
        self.status.forget(body["metadata"]["uid"])
