"""One operation per volume id at a time.

The CSI spec asks a plugin to refuse, not queue, a second call for a volume that has one
in flight: the caller (the kubelet) retries with backoff, and a slow publish never piles
up a queue of identical calls behind it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from kvol.csi.errors import OperationPending


class VolumeLocks:
    """Non-blocking, per-key locks: :meth:`hold` raises if the key is taken."""

    def __init__(self) -> None:
        self._held: dict[str, str] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, key: str, operation: str = "an operation") -> Iterator[None]:
        with self._guard:
            running = self._held.get(key)
            if running is not None:
                raise OperationPending(f"{running} is already in progress for volume {key!r}")
            self._held[key] = operation
        try:
            yield
        finally:
            with self._guard:
                del self._held[key]

    def busy(self, key: str) -> bool:
        with self._guard:
            return key in self._held
