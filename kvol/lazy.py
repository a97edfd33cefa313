"""Lazy cache entries: visible at once as placeholders, filled on first open (DESIGN: Fast path).

A placeholder is a content-cache entry (``<hash>.<mode>.<mtime_ns>``) with the file's
size, mode and mtime and no data yet. Lower snapshots hard-link it like any entry, so a
pod sees the whole tree before a byte is fetched. The placeholder's inode carries a
fanotify mark (pre-content class) for ``FAN_OPEN_PERM`` and ``FAN_PRE_ACCESS``: an open
of it (through an overlay too: overlayfs opens the lower file on the pod's behalf) waits
until the whole file is fetched, verified and written into that inode, then proceeds at
local-disk speed; a failed or corrupt fetch fails the open with EIO. The whole file is
filled on open, not the range read, because an overlay's ``mmap`` of a lower file reaches
the page cache without a pre-content event: nothing may map a file still holding holes.

Every byte written into a placeholder was verified first (the reader checks each part
against its id). An entry is a placeholder while it carries the ``trusted.kvol.lazy``
xattr; the xattr goes only after the data is on disk, so an entry without it is whole.
What each placeholder holds is written beforehand to a manifest in ``<cache>/.lazy``: a
new :class:`LazyFiller` on the same cache (the process restarted) marks every placeholder
left unfilled again and fetches it, before anything of this process may open it.

Limits: the marks live as long as the fanotify group, i.e. this process. Between its death
and the restart's :meth:`LazyFiller.start`, an open of a placeholder is not intercepted and
reads zeros (the kernel allows pending events of a closed group); the fill on restart
begins by marking them again. Needs root (``CAP_SYS_ADMIN``) and a filesystem that
supports pre-content events (ext4, xfs, btrfs) under the cache, kernel 6.14 or later.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from kvol import metrics
from kvol.errors import InvalidArgument, KvolError
from kvol.fangroup import HeldGroup, listen, respond
from kvol.lazy_entry import MASK, Marks, entry_name, is_placeholder, is_placeholder_fd
from kvol.lazy_fill import EntryGone, fill
from kvol.lazy_manifests import Manifests
from kvol.lazy_place import Placer
from kvol.lazy_queue import FillJob, FillQueue
from kvol.model import FileRecord
from kvol.repo import Repo

__all__ = [
    "STATE_DIR",
    "UNREGISTERED_CHECK_SECONDS",
    "UNREGISTERED_WAIT_SECONDS",
    "LazyFiller",
    "entry_name",
    "is_placeholder",
]

log = logging.getLogger(__name__)

#: The cache's directory of manifests (what each placeholder must be filled with).
STATE_DIR = ".lazy"
#: How long an open of a placeholder waits for its volume to be registered before it
#: fails (EIO). After a restart a volume is registered when a pod that uses it is
#: published again, within seconds; one no pod uses any more never is, and its opens
#: must not hang for ever.
UNREGISTERED_WAIT_SECONDS = 120.0
#: How often opens waiting for an unregistered volume are looked at.
UNREGISTERED_CHECK_SECONDS = 5.0


class LazyFiller:
    """The fanotify group that fills one content cache's placeholders.

    ``place`` makes placeholders; an open of one waits for its fill; ``prefetch`` queues
    fills in the background. Fills need the volume's :class:`Repo`: ``register`` it (a
    restarted filler marks placeholders at once, and fills them once their volume is
    registered; an open before that waits for it).

    This class runs the group: its threads, the fills they take from the queue, and the
    answers to the opens waiting for them. Making placeholders is :class:`Placer`'s, the
    order of fills :class:`FillQueue`'s, a fill's writes :func:`kvol.lazy_fill.fill`'s,
    the record of what is left to fill :class:`Manifests`'s.
    """

    def __init__(self, cache_root: str | Path, workers: int = 4) -> None:
        if workers < 2:
            raise InvalidArgument("a lazy filler needs 2 workers or more (one serves opens only)")
        self.root = Path(cache_root)
        self.state = self.root / STATE_DIR
        self.workers = workers
        self._queue = FillQueue()
        self._manifests = Manifests(self.state)
        self._marks = Marks()
        self._placer = Placer(self.root, self._queue, self._manifests, self._marks)
        self._filler_tids: set[int] = set()
        self._stop_r, self._stop_w = -1, -1
        self._threads: list[threading.Thread] = []
        self._held: HeldGroup | None = None
        self.failures = 0

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> LazyFiller:
        """Take the cache's group over from its holder (a previous filler died) or open a
        new one with a holder, start the listener and the fillers, and mark every
        placeholder a previous process left unfilled."""
        self._held = HeldGroup(self.state, f"the placeholders of {self.root}").open(MASK)
        self._marks.group = self._held.fd
        try:
            self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
            self._placer.resume()
        except BaseException:
            self._close_fds()
            raise
        listener = threading.Thread(
            target=listen,
            args=(self._marks.group, self._stop_r, self._on_event),
            name="kvol-lazy-events",
            daemon=True,
        )
        unregistered = threading.Thread(
            target=self._fail_unregistered_waits, name="kvol-lazy-unregistered", daemon=True
        )
        self._threads = [listener, unregistered]
        for i in range(self.workers):
            # The first filler only serves opens: one never waits behind prefetching.
            worker = threading.Thread(
                target=self._work, args=(i == 0,), name=f"kvol-lazy-fill-{i}", daemon=True
            )
            self._threads.append(worker)
        for t in self._threads:
            t.start()
        return self

    def stop(self, *, release: bool = True) -> None:
        """Stop listening. Opens still waiting fail with EIO; placeholders stay
        placeholders (a new filler marks and fills them).

        ``release`` ends the holder too, and with it the marks: only when no mount uses a
        placeholder any more (an open of one would then read its zeros). Without it the
        group lives on and opens wait for the next filler on this cache."""
        if self._marks.group < 0 or not self._queue.close():
            if release:
                self._release_holder()  # stopped before, the group left to the holder
            return
        os.write(self._stop_w, b"x")
        for t in self._threads:
            t.join()
        for job in self._queue.jobs():
            with job.lock:
                waiters, job.waiters = job.waiters, []
            self._answer_held(waiters, ok=False)
        if release:
            self._release_holder()
        self._close_fds()

    def _release_holder(self) -> None:
        if self._held is not None:
            self._held.release()

    def _close_fds(self) -> None:
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._stop_r = self._stop_w = self._marks.group = -1
        if self._held is not None:
            self._held.close()

    def register(self, repo: Repo) -> None:
        """Fills of ``repo``'s volume may use it from now on."""
        self._queue.register(repo)

    def claim(self, repo: Repo, paths: Iterable[Path]) -> None:
        """These entries are ``repo``'s files too: a placeholder among them whose own
        volume is not registered (left by a previous process) may be filled from
        ``repo`` (the content is the same, by its id), so nobody waits on a volume that
        may never be registered again."""
        self._queue.claim(repo, paths)

    def place(
        self, repo: Repo, items: list[tuple[Path, Path, FileRecord]], concurrency: int = 4
    ) -> list[Path]:
        """Put each ``(name, entry, record)``'s file at ``name``, a path in a directory
        nobody else can see yet (a snapshot being built): a link of the cache's ``entry``
        where it exists, else a new placeholder, linked to ``entry`` too. Returns the
        entries placed. The manifest is durable before any placeholder appears in the cache.
        """
        self.claim(repo, (e for _, e, _ in items))
        return self._placer.place(repo.volume_id, items, concurrency)

    # -- filling -------------------------------------------------------------------------

    def prefetch(self, paths: Iterable[Path]) -> None:
        """Queue the fills of these placeholders behind any an open waits for."""
        self._queue.prefetch(paths)

    def pending(self) -> int:
        """Placeholders not filled yet."""
        return self._queue.pending()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or being filled; whether that happened in time."""
        return self._queue.wait_idle(timeout)

    def _work(self, demand_only: bool) -> None:
        self._filler_tids.add(threading.get_native_id())
        while (batch := self._queue.next_batch(demand_only)) is not None:
            try:
                self._fill_batch(batch)
            finally:
                self._queue.ran(batch)

    def _fail_unregistered_waits(self) -> None:
        """Fail the opens that waited longer than UNREGISTERED_WAIT_SECONDS for their
        volume to be registered. Their placeholders stay (a later registration fills
        them, and the next open reads them)."""
        while (parked := self._queue.wait_parked(UNREGISTERED_CHECK_SECONDS)) is not None:
            limit = time.monotonic() - UNREGISTERED_WAIT_SECONDS
            for job in parked:
                with job.lock:
                    late = [w for w in job.waiters if w[1] <= limit]
                    if not late or self._queue.registered(job.volume_id):
                        continue  # in time, or registered meanwhile (its fill is coming)
                    job.waiters = [w for w in job.waiters if w[1] > limit]
                self.failures += len(late)
                log.warning(
                    "open of %s failed: its volume %s was not registered within %g s (no "
                    "pod on this node uses it since the restart)",
                    job.path.name,
                    job.volume_id,
                    UNREGISTERED_WAIT_SECONDS,
                )
                self._answer_held(late, ok=False)

    def _fill_batch(self, batch: list[FillJob]) -> None:
        reader = self._queue.repo(batch[0].volume_id).reader()
        try:
            with contextlib.suppress(KvolError, OSError):
                reader.prefetch(j.record for j in batch if len(batch) > 1)
            for job in batch:
                ok = False
                try:
                    fill(job, reader, self._marks)
                    ok = True
                except EntryGone:
                    self._forget(job)
                    continue
                except (KvolError, OSError) as exc:
                    self.failures += 1
                    log.warning("fetch of %s failed: %s", job.path.name, exc)
                metrics.LAZY_FETCHES.labels("ok" if ok else "failed").inc()
                if ok:
                    metrics.LAZY_FETCHED_BYTES.inc(job.record.size)
                self._finish(job, ok)
        finally:
            reader.release()

    def _forget(self, job: FillJob) -> None:
        # Evicted: only entries no snapshot links are, so nobody can open that inode now.
        with job.lock:
            job.done = True
            waiters, job.waiters = job.waiters, []
        self._answer_held(waiters, ok=False)
        self._retire(job)

    def _finish(self, job: FillJob, ok: bool) -> None:
        with job.lock:
            if ok:
                job.done = True
            waiters, job.waiters = job.waiters, []
        self._answer_held(waiters, ok=ok)
        if ok:
            self._retire(job)

    def _retire(self, job: FillJob) -> None:
        self._queue.retire(job)
        self._manifests.release(job.manifest, 1)

    # -- events --------------------------------------------------------------------------

    def _answer(self, fds: list[int], *, ok: bool) -> None:
        for fd in fds:
            respond(self._marks.group, fd, ok)

    def _answer_held(self, waiters: list[tuple[int, float]], *, ok: bool) -> None:
        # Counted first: the answer lets the read go on, and whatever it does next (a
        # scrape, a test) must find it counted.
        for _, since in waiters:
            metrics.count_held_read(ok, since)
        self._answer([fd for fd, _ in waiters], ok=ok)

    def _on_event(self, fd: int, tid: int, _where: tuple[int, int] | None = None) -> None:
        if tid in self._filler_tids:
            self._answer([fd], ok=True)  # a filler writing the placeholder it owns
            return
        try:
            st = os.fstat(fd)
        except OSError:
            self._answer([fd], ok=False)
            return
        job = self._queue.at((st.st_dev, st.st_ino))
        if job is None:
            # Filled meanwhile (its mark on the way out), else a placeholder nothing will
            # fill: its data was never written, so the open fails rather than read zeros.
            filled = not is_placeholder_fd(fd)
            if not filled:
                self.failures += 1
            self._answer([fd], ok=filled)
            return
        with job.lock:
            if not job.done:
                job.waiters.append((fd, time.monotonic()))
                self._queue.demand(job)
                return
        self._answer([fd], ok=True)
