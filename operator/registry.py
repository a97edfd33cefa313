"""The VolumeBackends the operator knows, and their open stores.

kopf feeds every VolumeBackend event in (:meth:`Backends.observe`), so resolving a
Volume's backend costs no API call; one not seen yet (the watch of Volumes can run ahead
of the watch of backends at startup) is read from the API server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kvol import errors
from kvol.operator import backends
from kvol.operator.kube import Kube
from kvol.operator.resources import BackendSpec, is_default
from kvol.store import Store


@dataclass(frozen=True)
class Backend:
    name: str
    spec: BackendSpec


@dataclass
class _Probe:
    at: float
    error: errors.KvolError | None


class Backends:
    def __init__(
        self,
        kube: Kube,
        *,
        operator_namespace: str,
        credentials_ttl: float = 60.0,
        probe_ttl: float = 2.0,
        opener: Callable[
            [BackendSpec, backends.Credentials | None], Store
        ] = backends.open_backend_store,
    ) -> None:
        self.kube = kube
        self.operator_namespace = operator_namespace
        self.credentials_ttl = credentials_ttl
        self.probe_ttl = probe_ttl
        self._objects: dict[str, Mapping[str, Any]] = {}
        self._complete = False
        self._stores = backends.StoreCache(opener)
        self._opened: dict[str, float] = {}
        self._probes: dict[str, _Probe] = {}
        self._lock = threading.Lock()

    # -- what exists ------------------------------------------------------------------------

    def observe(self, obj: Mapping[str, Any]) -> None:
        with self._lock:
            self._objects[obj["metadata"]["name"]] = obj

    def forget(self, name: str) -> None:
        with self._lock:
            self._objects.pop(name, None)
            self._opened.pop(name, None)
            self._probes.pop(name, None)
        self._stores.drop(name)

    def _refresh(self) -> None:
        items = self.kube.list_backends()
        with self._lock:
            self._objects = {item["metadata"]["name"]: item for item in items}
            self._complete = True

    def get(self, name: str) -> Backend:
        """The backend called ``name``. Raises NotFound, or InvalidArgument for a bad spec."""
        with self._lock:
            obj = self._objects.get(name)
        if obj is None:
            obj = self.kube.get_backend(name)
            if obj is None:
                raise errors.NotFound(f"VolumeBackend {name!r} does not exist")
            self.observe(obj)
        return self._parse(obj)

    def default(self) -> Backend:
        """The backend marked default. Raises NotFound when there is none or more than one."""
        for attempt in range(2):
            with self._lock:
                objects = list(self._objects.values())
                complete = self._complete
            marked = sorted(obj["metadata"]["name"] for obj in objects if _is_default(obj))
            if len(marked) == 1:
                return self.get(marked[0])
            if attempt == 0 and not complete:
                self._refresh()  # we may not have seen every backend yet
                continue
            if marked:
                raise errors.NotFound(
                    f"{len(marked)} VolumeBackends are marked default ({', '.join(marked)}): "
                    "mark exactly one, or name the backend in spec.backend"
                )
        raise errors.NotFound(
            "no VolumeBackend is marked default: mark one (spec.default: true) "
            "or name the backend in spec.backend"
        )

    def defaults(self) -> list[str]:
        with self._lock:
            return sorted(n for n, obj in self._objects.items() if _is_default(obj))

    @staticmethod
    def _parse(obj: Mapping[str, Any]) -> Backend:
        name = obj["metadata"]["name"]
        try:
            spec = BackendSpec.parse(obj.get("spec") or {}, obj["metadata"].get("annotations"))
        except errors.InvalidArgument as exc:
            raise errors.InvalidArgument(f"VolumeBackend {name!r} is invalid: {exc}") from exc
        return Backend(name, spec)

    # -- stores -------------------------------------------------------------------------------

    def store(self, backend: Backend) -> Store:
        """The open store of ``backend``; credentials are re-read every ``credentials_ttl``."""
        now = time.monotonic()
        with self._lock:
            opened = self._opened.get(backend.name)
        if opened is not None and now - opened < self.credentials_ttl:
            cached = self._stores.peek(backend.name, backend.spec)
            if cached is not None:
                return cached
        credentials = self._credentials(backend)
        store = self._stores.get(backend.name, backend.spec, credentials)
        with self._lock:
            self._opened[backend.name] = now
        return store

    def _credentials(self, backend: Backend) -> backends.Credentials | None:
        s3 = backend.spec.s3
        if s3 is None or s3.credentials is None:
            return None
        namespace = s3.credentials.namespace or self.operator_namespace
        where = f"{namespace}/{s3.credentials.name}"
        secret = self.kube.get_secret(namespace, s3.credentials.name)
        if secret is None:
            raise errors.NotFound(
                f"Secret {where} named by VolumeBackend {backend.name!r} does not exist"
            )
        return backends.credentials_from_secret(secret, where)

    def probe(self, backend: Backend) -> Store:
        """The backend's store if it answers; the answer is reused for ``probe_ttl``."""
        now = time.monotonic()
        with self._lock:
            last = self._probes.get(backend.name)
        if last is not None and now - last.at < self.probe_ttl:
            if last.error is not None:
                raise last.error
            return self.store(backend)
        try:
            store = self.store(backend)
            backends.probe(store, backend.spec)
        except errors.KvolError as exc:
            with self._lock:
                self._probes[backend.name] = _Probe(now, exc)
            raise
        with self._lock:
            self._probes[backend.name] = _Probe(now, None)
        return store

    def close(self) -> None:
        self._stores.close()


def _is_default(obj: Mapping[str, Any]) -> bool:
    return is_default(obj.get("spec") or {}, obj.get("metadata", {}).get("annotations"))
