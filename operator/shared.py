"""What every part of the reconciler works with (kvol.operator.reconcile)."""

from __future__ import annotations

from dataclasses import dataclass

from kvol.operator.content import ContentCache
from kvol.operator.kube import Kube
from kvol.operator.locks import KeyedLocks
from kvol.operator.registry import Backends
from kvol.operator.settings import Settings
from kvol.operator.status import EventSink, StatusBook


@dataclass(frozen=True)
class Shared:
    """The API server, the backends and settings, and the state reconciliations share:
    one lock per object, the status last written, the content status of each volume."""

    kube: Kube
    backends: Backends
    settings: Settings
    emit: EventSink
    locks: KeyedLocks
    status: StatusBook
    content: ContentCache


class Part:
    """One job of the reconciler, over the shared state."""

    def __init__(self, shared: Shared) -> None:
        self.kube = shared.kube
        self.backends = shared.backends
        self.settings = shared.settings
        self.emit = shared.emit
        self.locks = shared.locks
        self.status = shared.status
        self.content = shared.content
