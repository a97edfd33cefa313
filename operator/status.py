"""The status of Volumes and VolumeBackends as the operator last wrote it.

The operator is the only writer of ``status``: it keeps what it last wrote per object,
writes only what changed, and posts an Event whenever a condition or the phase changes.
It also knows which backend each Volume it reconciled is on, for the backends' counts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kvol.operator import metrics, specs
from kvol.operator.kube import Kube

#: (type, ok, reason, message) of one condition to set.
Condition = tuple[str, bool, str, str]
#: (object, event type "Normal"|"Warning", reason, message)
EventSink = Callable[[Mapping[str, Any], str, str, str], None]
Obj = dict[str, Any]

READY = "Ready"
REACHABLE = "BackendReachable"


class StatusBook:
    """What the operator last wrote to each object's status, by uid, and each Volume's
    backend; written through to the API server."""

    def __init__(self, kube: Kube, emit: EventSink) -> None:
        self.kube = kube
        self.emit = emit
        self._status: dict[str, Obj] = {}
        self._volume_backend: dict[str, str] = {}
        self._guard = threading.Lock()

    def current(self, obj: Mapping[str, Any]) -> Obj:
        """The status this process last wrote, else the one the object carries."""
        with self._guard:
            known = self._status.get(obj["metadata"]["uid"])
        return dict(known if known is not None else obj.get("status") or {})

    def remember(self, uid: str, status: Mapping[str, Any]) -> None:
        """Record a status just patched onto the object ``uid``."""
        with self._guard:
            self._status[uid] = {k: v for k, v in status.items() if v is not None}

    def write(
        self,
        obj: Mapping[str, Any],
        changes: Mapping[str, Any],
        conditions: Sequence[Condition] = (),
    ) -> Obj:
        """Apply ``changes`` and conditions to a Volume's status; patch and post events if
        it moved."""
        meta = obj["metadata"]
        current = self.current(obj)
        new = {**current, **changes}
        events: list[tuple[str, str, str]] = []
        for type_, ok, reason, message in conditions:
            before = specs.condition(new, type_)
            new["conditions"], flipped = specs.set_condition(
                new.get("conditions"),
                type_,
                ok,
                reason,
                message,
                generation=meta.get("generation"),
            )
            if flipped or (before is not None and before.get("reason") != reason):
                events.append(("Normal" if ok else "Warning", reason, message))
        if new.get("phase") != current.get("phase"):
            events.append(("Normal", new["phase"], f"Volume is {new['phase']}"))
        patch = {k: v for k, v in new.items() if current.get(k) != v}
        if patch:
            self.kube.patch_volume_status(meta["namespace"], meta["name"], patch)
            self.remember(meta["uid"], new)
        if new.get("phase"):
            metrics.VOLUME_PHASES.set(meta["uid"], new["phase"], meta["namespace"], meta["name"])
        for type_, reason, message in events:
            metrics.EVENTS.labels("Volume", reason).inc()
            self.emit(obj, type_, reason, message)
        return new

    def place(self, uid: str, backend: str) -> None:
        """Record that the Volume ``uid`` is on ``backend``."""
        with self._guard:
            self._volume_backend[uid] = backend

    def volumes_on(self, backend: str) -> int:
        with self._guard:
            return sum(1 for b in self._volume_backend.values() if b == backend)

    def forget(self, uid: str) -> None:
        """Drop all that is kept about an object that is gone, its gauges included."""
        with self._guard:
            self._status.pop(uid, None)
            self._volume_backend.pop(uid, None)
        metrics.VOLUME_PHASES.forget(uid)
        metrics.VOLUME_STORAGE.forget(uid)
