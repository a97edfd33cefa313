"""The order in which a blob filler (see :mod:`kvol.blobfill`) fills parts: one a read waits
for before any in the background, background parts in batches of one blob, and none of a
volume before its repo is registered."""

from __future__ import annotations

import collections
from collections.abc import Iterable

from kvol.blob_parts import Blob, Part

#: Background parts per batch: small files of one pack come in one request.
BATCH = 64


class PartQueue:
    """The parts one filler is asked to fill, in order.

    It has no lock of its own: the filler's lock, which guards the parts too, is held
    around every call.
    """

    def __init__(self) -> None:
        self._demand: collections.deque[tuple[Blob, Part]] = collections.deque()
        self._background: collections.deque[tuple[Blob, Part]] = collections.deque()
        #: Parts asked for before their volume was registered (by reads, in the
        #: background).
        self._unregistered: dict[str, list[tuple[Blob, Part]]] = {}
        self._unregistered_later: dict[str, list[tuple[Blob, Part]]] = {}

    def demand(self, blob: Blob, parts: Iterable[Part]) -> None:
        """Queue ``parts`` of ``blob`` ahead of the background: a read waits for them."""
        self._demand.extend((blob, p) for p in parts)

    def background(self, blob: Blob, parts: Iterable[Part]) -> None:
        """Queue ``parts`` of ``blob`` behind any a read waits for."""
        self._background.extend((blob, p) for p in parts)

    def registered(self, volume_id: str) -> None:
        """The blobs of ``volume_id`` have its repo now: queue again the parts asked for
        before, those reads wait for first."""
        self._demand.extendleft(reversed(self._unregistered.pop(volume_id, [])))
        self._background.extend(self._unregistered_later.pop(volume_id, []))

    def empty(self) -> bool:
        """Whether nothing is queued."""
        return not self._demand and not self._background

    def take(self, demand_only: bool) -> list[tuple[Blob, Part]]:
        """The next part a read waits for, else background parts of one blob (marked
        running). A part already filled or being filled is skipped (its waiters are kept)."""
        for queue in (self._demand,) if demand_only else (self._demand, self._background):
            batch: list[tuple[Blob, Part]] = []
            while queue and len(batch) < (1 if queue is self._demand else BATCH):
                blob, part = queue[0]
                if part.filled or part.running:
                    queue.popleft()
                    continue
                if blob.repo is None:  # its volume is not registered yet
                    waiting = (
                        self._unregistered if queue is self._demand else self._unregistered_later
                    )
                    waiting.setdefault(blob.volume_id, []).append(queue.popleft())
                    continue
                if batch and blob is not batch[0][0]:
                    break
                queue.popleft()
                part.running = True
                batch.append((blob, part))
            if batch:
                return batch
        return []
