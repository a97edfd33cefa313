"""From what a pod asks for (a volume name in its namespace) to a volume in a store.

The static resolver serves a node whose plugin was given one store (``--store``): names
are looked up in that store's catalog under the pod's namespace, where the operator writes
them. A namespace's names never include those of the CLI and SDK (see kvol.catalog), so
no namespace, not even one called ``main``, reaches volumes made outside the cluster.

The background commit interval of a publication is, first, the pod's own
``autocommitIntervalSeconds`` volume attribute; else the Volume's, which the operator keeps
in the store (:mod:`kvol.volume_settings`) and which is read here at every publish;
else the plugin's default. A change of the Volume's interval therefore applies to the
working copies published after it (pods that start later), not to running ones.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Protocol

from kvol.catalog import Catalog
from kvol.errors import CorruptData
from kvol.repo import Repo
from kvol.store import Store, open_store
from kvol.volume_settings import VolumeSettings, read_settings

log = logging.getLogger(__name__)

#: Background commit interval when the volume does not say (Modal: "every few seconds").
DEFAULT_AUTOCOMMIT_SECONDS = 5.0


@dataclass(frozen=True)
class Resolved:
    name: str
    namespace: str
    #: What :meth:`Resolver.store` needs to reopen the store later (after a restart).
    backend: str
    repo: Repo
    autocommit_seconds: float


class Resolver(Protocol):
    def resolve(self, name: str, namespace: str, backend: str = "") -> Resolved:
        """The volume called ``name`` in ``namespace``; raises kvol.errors.NotFound."""

    def store(self, backend: str) -> Store:
        """The store of ``backend`` (as recorded by :meth:`resolve`), without I/O."""


class StaticResolver:
    """Every volume lives in one store; names come from its catalog, scoped by namespace."""

    def __init__(
        self, store_url: str, autocommit_seconds: float = DEFAULT_AUTOCOMMIT_SECONDS
    ) -> None:
        self.store_url = store_url
        self.autocommit_seconds = autocommit_seconds
        self._store: Store | None = None
        self._lock = threading.Lock()

    def store(self, backend: str = "") -> Store:
        with self._lock:
            if self._store is None:
                self._store = open_store(self.store_url)
            return self._store

    def resolve(self, name: str, namespace: str, backend: str = "") -> Resolved:
        store = self.store(backend)
        meta = Catalog.for_namespace(store, namespace).lookup(name)
        try:
            settings = read_settings(store, meta.id)
        except CorruptData as exc:
            # A preference, not data: the pod still gets its volume, with the default.
            log.warning("volume %s/%s: %s; using the default interval", namespace, name, exc)
            settings = VolumeSettings()
        return Resolved(
            name=name,
            namespace=namespace,
            backend=backend,
            repo=Repo(store, meta.id, meta),
            autocommit_seconds=self.autocommit_seconds
            if settings.autocommit_seconds is None
            else settings.autocommit_seconds,
        )
