"""Filling a snapshot's blob (see :mod:`kvol.erofs`) as the kernel reads it.

The blob starts sparse. It carries a fanotify mark for pre-content access, made before
the image is mounted (the mount opens the blob once, and only a file opened while a mark
exists raises those events). Every read of the blob by the filesystem then waits for an
event that names the range it reads; the filler fetches the parts of the files under
that range, verifies each against its id, writes them into the blob and lets the read
go on. A part is the unit: the first read of a large file waits for one part (a chunk of
at most the volume's chunk size), not for the file. A page fault of a mapped file reads
the blob the same way, so mappings need no special case.

Meanwhile a background fill works through the rest. What is filled is recorded beside
the blob (``<blob>.filled``, the start offsets of filled parts) once the blob's data is on
disk, so a new filler on the same blob fetches only what is missing. When everything is
filled the mark goes, and reads run at local-disk speed with no event at all.

The group outlives the filler (kvol/fangroup.py): when the filler dies, reads wait for
the next one, which adds the blobs again and serves them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from kvol import metrics
from kvol.blob_file import open_blob, record_filled, write_part
from kvol.blob_parts import Blob, Part, Wait, unfilled_bytes
from kvol.blob_queue import PartQueue
from kvol.content import ContentReader
from kvol.errors import InvalidArgument, KvolError
from kvol.fangroup import (
    FAN_MARK_ADD,
    FAN_MARK_REMOVE,
    FAN_PRE_ACCESS,
    HeldGroup,
    listen,
    mark,
    respond,
)
from kvol.model import FileRecord
from kvol.repo import Repo

log = logging.getLogger(__name__)

#: Parts of a file fetched ahead of a read that waits for one of them.
READAHEAD = 4
#: Seconds between records of what was filled (and syncs of the blob's data): a sync
#: every second slowed a large file's first read by a quarter; a crash forgets at most
#: this much, fetched again.
LOG_INTERVAL = 10.0


class BlobFiller:
    """The fanotify group that fills blobs as they are read, and in the background.

    This class runs the group: the blobs it watches, its threads, the fills they take
    from the queue, and the answers to the reads waiting for them. What it knows of a blob
    is :mod:`kvol.blob_parts`', the order of fills :class:`PartQueue`'s, and the blob on
    disk (its parts written, what is filled recorded) :mod:`kvol.blob_file`'s.
    """

    def __init__(self, state: Path, workers: int = 8) -> None:
        if workers < 2:
            raise InvalidArgument("a blob filler needs 2 workers or more (one serves reads only)")
        self.state = state
        self.workers = workers
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._blobs: dict[tuple[int, int], Blob] = {}
        #: The parts to fill, in order (under the lock, as the parts are).
        self._queue = PartQueue()
        #: Reads of blobs not added yet, from before a restart: they wait for add().
        self._parked: dict[tuple[int, int], list[tuple[int, tuple[int, int] | None]]] = {}
        self._repos: dict[str, Repo] = {}
        self._settled = True
        self._filler_tids: set[int] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._held: HeldGroup | None = None
        self._group = -1
        self._stop_r = self._stop_w = -1
        self._log_stop = threading.Event()
        self.failures = 0
        #: Reads of the blobs held for an answer (every one a round trip through here).
        self.events = 0

    def start(self) -> BlobFiller:
        """Take the group over from its holder (a previous filler died: reads it left
        waiting wait for :meth:`add` of their blob, or :meth:`settle`) or open a new one."""
        self._held = HeldGroup(self.state, f"the blobs of {self.state}").open(FAN_PRE_ACCESS)
        self._group = self._held.fd
        self._settled = not self._held.adopted
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._spawn("kvol-blob-events", lambda: listen(self._group, self._stop_r, self._on_event))
        self._spawn("kvol-blob-log", self._log_every)
        self._spawn("kvol-blob-demand", lambda: self._work(demand_only=True))
        for i in range(self.workers - 1):
            self._spawn(f"kvol-blob-fill_{i}", lambda: self._work(demand_only=False))
        return self

    def settle(self) -> None:
        """Every blob there is was added: reads of any other fail from now on (EIO)."""
        with self._lock:
            self._settled = True
            parked = [fd for waiting in self._parked.values() for fd, _ in waiting]
            self._parked.clear()
        for fd in parked:
            self._respond(fd, False)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, *, release: bool = True) -> None:
        """Stop filling; reads still waiting fail with EIO. ``release`` ends the group's
        holder too, and with it the marks (unfilled ranges would then read as holes: only
        once nothing mounts these blobs); without it reads wait for the next filler."""
        with self._wake:
            if self._stopping:
                if release and self._held is not None:
                    self._held.release()  # stopped before, the group left to its holder
                return
            self._stopping = True
            self._wake.notify_all()
            blobs = list(self._blobs.values())
            self._blobs.clear()
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
        self._log_stop.set()
        for thread in self._threads:
            thread.join()
        self.settle()
        for blob in blobs:
            self._close(blob)
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._stop_r = self._stop_w = self._group = -1
        if self._held is not None:
            if release:
                self._held.release()
            self._held.close()

    def _close(self, blob: Blob) -> None:
        with self._lock:
            blob.closed = True
            metrics.LAZY_PENDING_BYTES.dec(unfilled_bytes(blob))
        record_filled(blob, self._lock)
        for part in blob.parts:
            if part.waiters:
                self._answer(part.waiters, ok=False)
            part.waiters = None
        os.close(blob.fd)
        os.close(blob.log_fd)

    # -- blobs -------------------------------------------------------------------------

    def add(self, blob: Path, volume_id: str, contents: Iterable[tuple[int, FileRecord]]) -> int:
        """Watch ``blob`` (made and sized by the caller, not yet mounted), whose
        ``contents`` are ``(blob offset, record)`` pairs of volume ``volume_id``'s files,
        fetched once that volume is :meth:`register`-ed. Returns the parts still to fill
        (those ``<blob>.filled`` does not list). Adding a blob again changes nothing."""
        st = os.stat(blob)
        with self._lock:
            known = self._blobs.get((st.st_dev, st.st_ino))
            if known is not None:
                return known.left
        key, state = open_blob(blob, volume_id, contents)
        left = state.left  # as opened: fills may begin as soon as it is known
        if left:
            try:
                mark(self._group, FAN_MARK_ADD, FAN_PRE_ACCESS, state.fd)
            except OSError:
                os.close(state.fd)
                os.close(state.log_fd)
                raise
        with self._lock:
            state.repo = self._repos.get(volume_id)
            self._blobs[key] = state
            metrics.LAZY_PENDING_BYTES.inc(unfilled_bytes(state))
            parked = self._parked.pop(key, [])
        for event_fd, where in parked:
            self._on_event(event_fd, 0, where)
        return left

    def knows(self, blob: Path) -> bool:
        """Whether ``blob`` was added (and not removed)."""
        try:
            st = os.stat(blob)
        except FileNotFoundError:
            return False
        with self._lock:
            return (st.st_dev, st.st_ino) in self._blobs

    def register(self, repo: Repo) -> None:
        """Parts of ``repo``'s volume may be fetched from it from now on (after a
        restart, reads of its blobs wait until then)."""
        with self._wake:
            self._repos[repo.volume_id] = repo
            for blob in self._blobs.values():
                if blob.volume_id == repo.volume_id:
                    blob.repo = repo
            self._queue.registered(repo.volume_id)
            self._wake.notify_all()

    def remove(self, blob: Path) -> None:
        """Stop watching ``blob`` (its image unmounted); reads still waiting fail."""
        st = os.stat(blob)
        with self._lock:
            state = self._blobs.pop((st.st_dev, st.st_ino), None)
        if state is not None:
            with contextlib.suppress(OSError):
                mark(self._group, FAN_MARK_REMOVE, FAN_PRE_ACCESS, state.fd)
            self._close(state)

    def prefetch(self, blob: Path) -> None:
        """Fill everything of ``blob`` in the background (reads still come first)."""
        st = os.stat(blob)
        with self._wake:
            state = self._blobs.get((st.st_dev, st.st_ino))
            if state is not None:
                self._queue.background(state, (p for p in state.parts if not p.filled))
            self._wake.notify_all()

    def pending(self, blob: Path) -> int:
        """Parts of ``blob`` still to fill."""
        st = os.stat(blob)
        with self._lock:
            state = self._blobs.get((st.st_dev, st.st_ino))
            return 0 if state is None else state.left

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or being filled; whether that happened in time."""
        with self._wake:
            return self._wake.wait_for(
                lambda: (
                    self._queue.empty()
                    and not any(p.running for s in self._blobs.values() for p in s.parts)
                ),
                timeout,
            )

    # -- filling -----------------------------------------------------------------------

    def _work(self, demand_only: bool) -> None:
        self._filler_tids.add(threading.get_native_id())
        while True:
            with self._wake:
                while True:
                    if self._stopping:
                        return
                    batch = self._queue.take(demand_only)
                    if batch:
                        break
                    self._wake.wait()
            self._fill(batch)
            with self._wake:
                self._wake.notify_all()

    def _fill(self, batch: list[tuple[Blob, Part]]) -> None:
        """Fetch, verify and write the batch's parts; every one of them is settled (its
        reads answered, and no longer running) whatever happens."""
        blob = batch[0][0]
        outcome: dict[int, bool] = {}
        try:
            assert blob.repo is not None  # the queue hands out parts of registered volumes only
            reader = blob.repo.reader()
            try:
                if len(batch) > 1:
                    with contextlib.suppress(KvolError, OSError):
                        reader.prefetch(p.record for _, p in batch)
                for _, part in batch:
                    outcome[id(part)] = self._fill_part(blob, part, reader)
            finally:
                reader.release()
        finally:
            filled = [p.start for _, p in batch if outcome.get(id(p))]
            if filled:
                with self._lock:
                    blob.unlogged.extend(filled)
            for _, part in batch:
                self._settle(blob, part, outcome.get(id(part), False))

    def _log_every(self) -> None:
        while not self._log_stop.wait(LOG_INTERVAL):
            with self._lock:
                blobs = [b for b in self._blobs.values() if b.unlogged]
            for blob in blobs:
                record_filled(blob, self._lock)

    def _fill_part(self, blob: Blob, part: Part, reader: ContentReader) -> bool:
        try:
            size = write_part(blob, part, reader)
        except (KvolError, OSError) as exc:
            self.failures += 1
            metrics.LAZY_FETCHES.labels("failed").inc()
            log.warning("fetch of part %d of %s failed: %s", part.index, part.record.hash, exc)
            return False
        metrics.LAZY_FETCHES.labels("ok").inc()
        metrics.LAZY_FETCHED_BYTES.inc(size)
        return True

    def _settle(self, blob: Blob, part: Part, ok: bool) -> None:
        answered: list[Wait] = []
        with self._lock:
            if ok and not part.filled:
                part.filled = True
                blob.left -= 1
                if not blob.closed:
                    metrics.LAZY_PENDING_BYTES.dec(part.end - part.start)
            # Not running from here on, with the same lock held as the waiters are taken:
            # a read that comes after queues a fetch of its own, never waits on this one.
            part.running = False
            waiters, part.waiters = part.waiters or (), None
            for wait in waiters:
                wait.ok = wait.ok and ok
                wait.left -= 1
                if wait.left == 0:
                    answered.append(wait)
            everything = ok and blob.left == 0
        for wait in answered:
            self._respond_held(wait, wait.ok)
        if everything:
            record_filled(blob, self._lock)
            # All there: reads need no event any more.
            with contextlib.suppress(OSError):
                mark(self._group, FAN_MARK_REMOVE, FAN_PRE_ACCESS, blob.fd)

    # -- events ------------------------------------------------------------------------

    def _respond(self, fd: int, ok: bool) -> None:
        respond(self._group, fd, ok)

    def _respond_held(self, wait: Wait, ok: bool) -> None:
        metrics.count_held_read(ok, wait.since)  # before the read goes on (see lazy.py)
        self._respond(wait.fd, ok)

    def _answer(self, waits: list[Wait], *, ok: bool) -> None:
        for wait in waits:
            if wait.left > 0:
                wait.left = 0
                self._respond_held(wait, ok)

    def _on_event(self, fd: int, tid: int, where: tuple[int, int] | None) -> None:
        if tid in self._filler_tids:
            self._respond(fd, True)  # a filler writing the blob
            return
        self.events += 1
        try:
            st = os.fstat(fd)
        except OSError:
            self._respond(fd, False)
            return
        with self._wake:
            blob = self._blobs.get((st.st_dev, st.st_ino))
            if blob is None:
                if not self._settled and not self._stopping:
                    # A blob of the previous filler's, not added again yet.
                    self._parked.setdefault((st.st_dev, st.st_ino), []).append((fd, where))
                    return
                ok = False  # a blob nobody fills (removed): never its holes
            else:
                parts = blob.parts if where is None else blob.under(*where)
                wanted = [p for p in parts if not p.filled]
                if wanted and not self._stopping:
                    wait = Wait(fd, len(wanted))
                    for part in wanted:
                        if part.waiters is None:
                            part.waiters = []
                        part.waiters.append(wait)
                    self._queue.demand(blob, wanted)
                    # A read of a large file goes on to its next parts: fetch them now,
                    # side by side, rather than one at a time as the reads come.
                    self._queue.demand(blob, blob.after(wanted[-1], READAHEAD))
                    self._wake.notify_all()
                    return
                ok = not wanted  # stopping with parts missing: fail the read, never zeros
                if not parts and where is not None and where[1]:
                    # Every byte of the image's files lies in a part: this read is of no
                    # file's (one whose record does not add up): fail it, never zeros.
                    self.failures += 1
                    log.error("%s: read of bytes %d+%d, which no file has", blob.path, *where)
                    ok = False
        self._respond(fd, ok)
