"""The placeholders a lazy filler knows (see :mod:`kvol.lazy`) and the order of their fills:
one an open waits for before any in the background, background fills in batches of one
volume, and none before its volume's repo is registered."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kvol.model import FileRecord
from kvol.repo import Repo

#: Records (and bytes) per background batch: small files of one pack come in one request,
#: and an open never waits long behind a batch that holds its file.
BATCH = 64
BATCH_BYTES = 8 << 20

DEMAND = 0
BACKGROUND = 1


@dataclass(eq=False)
class FillJob:
    """One placeholder: the inode to fill and what to fill it with."""

    path: Path
    volume_id: str
    record: FileRecord
    inode: tuple[int, int]
    manifest: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Event descriptors waiting for this fill (answered when it ends), and since when.
    waiters: list[tuple[int, float]] = field(default_factory=list)
    done: bool = False
    running: bool = False
    queued: int | None = None  # the best priority it is queued at


class FillQueue:
    """The jobs of one filler, by inode and by entry, and the queue of their fills.

    One lock guards it all; a job's own lock, where both are taken, is taken first.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[tuple[int, int], FillJob] = {}
        self._by_path: dict[Path, FillJob] = {}
        self._queue: list[tuple[int, int, FillJob]] = []
        self._order = itertools.count()
        self._repos: dict[str, Repo] = {}
        #: Jobs queued before their volume's repo was registered (after a restart).
        self._parked: dict[str, list[FillJob]] = {}
        self._closed = False

    # -- jobs ----------------------------------------------------------------------------

    def add(self, job: FillJob, priority: int | None = None) -> None:
        """Know ``job`` (by its inode and its entry), queued at ``priority`` if given."""
        with self._lock:
            self._jobs[job.inode] = job
            self._by_path[job.path] = job
            if priority is not None:
                self._push(job, priority)

    def withdraw(self, job: FillJob) -> None:
        """Forget ``job`` just added: its placeholder did not become the entry."""
        with self._lock:
            del self._jobs[job.inode]
            if self._by_path.get(job.path) is job:
                del self._by_path[job.path]

    def retire(self, job: FillJob) -> None:
        """Forget ``job``: filled, or its entry gone."""
        with self._lock:
            self._jobs.pop(job.inode, None)
            if self._by_path.get(job.path) is job:
                del self._by_path[job.path]

    def at(self, inode: tuple[int, int]) -> FillJob | None:
        """The job of the placeholder ``inode`` (device, inode)."""
        with self._lock:
            return self._jobs.get(inode)

    def knows(self, path: Path) -> bool:
        """Whether a job fills the entry at ``path``."""
        with self._lock:
            return path in self._by_path

    def jobs(self) -> list[FillJob]:
        """Every job known, done or not."""
        with self._lock:
            return list(self._jobs.values())

    def pending(self) -> int:
        """Jobs not done yet."""
        with self._lock:
            return sum(1 for j in self._jobs.values() if not j.done)

    # -- volumes -------------------------------------------------------------------------

    def register(self, repo: Repo) -> None:
        """Fills of ``repo``'s volume may use it from now on."""
        with self._lock:
            self._repos[repo.volume_id] = repo
            for job in self._parked.pop(repo.volume_id, []):
                if job.queued is not None and not job.done:
                    heapq.heappush(self._queue, (job.queued, next(self._order), job))
            self._wake.notify_all()

    def claim(self, repo: Repo, paths: Iterable[Path]) -> None:
        """Register ``repo``, and let it fill the jobs of these entries whose own volume is
        not registered (the content is the same, by its id)."""
        self.register(repo)
        with self._lock:
            for path in paths:
                job = self._by_path.get(path)
                if job is None or job.done or job.volume_id in self._repos:
                    continue
                parked = self._parked.get(job.volume_id, [])
                if job in parked:
                    parked.remove(job)
                job.volume_id = repo.volume_id
                if job.queued is not None:
                    heapq.heappush(self._queue, (job.queued, next(self._order), job))
            self._wake.notify_all()

    def repo(self, volume_id: str) -> Repo:
        """The registered repo of ``volume_id``."""
        with self._lock:
            return self._repos[volume_id]

    def registered(self, volume_id: str) -> bool:
        # Unlocked: called under a job's lock, and a lookup in a dict is atomic.
        return volume_id in self._repos

    def wait_parked(self, timeout: float) -> list[FillJob] | None:
        """After ``timeout``, the jobs waiting for their volume to be registered; None as
        soon as the queue is closed."""
        with self._wake:
            if self._wake.wait_for(lambda: self._closed, timeout):
                return None
            return [job for jobs in self._parked.values() for job in jobs]

    # -- the queue -----------------------------------------------------------------------

    def prefetch(self, paths: Iterable[Path]) -> None:
        """Queue the fills of these entries' jobs behind any an open waits for."""
        with self._lock:
            for path in paths:
                job = self._by_path.get(path)
                if job is not None and not job.done:
                    self._push(job, BACKGROUND)
            self._wake.notify_all()

    def demand(self, job: FillJob) -> None:
        """Queue ``job`` ahead of the background: an open waits for it."""
        with self._lock:
            self._push(job, DEMAND)

    def _push(self, job: FillJob, priority: int) -> None:
        # Under self._lock. A job queued twice is filled once (the later pop skips it).
        if job.queued is not None and job.queued <= priority:
            return
        job.queued = priority
        if job.volume_id not in self._repos:
            self._parked.setdefault(job.volume_id, []).append(job)  # until registered
            return
        heapq.heappush(self._queue, (priority, next(self._order), job))
        self._wake.notify_all()

    def next_batch(self, demand_only: bool) -> list[FillJob] | None:
        """Wait for the next batch to fill (see :meth:`_take`), marked running until
        :meth:`ran`; None once the queue is closed."""
        with self._wake:
            while True:
                if self._closed:
                    return None
                batch = self._take(demand_only)
                if batch:
                    return batch
                self._wake.wait()

    def ran(self, batch: list[FillJob]) -> None:
        """The fills of ``batch`` are over (done or not)."""
        with self._wake:
            for job in batch:
                job.running = False
            self._wake.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or being filled; whether that happened in time."""
        with self._wake:
            return self._wake.wait_for(
                lambda: not self._queue and not any(j.running for j in self._jobs.values()),
                timeout,
            )

    def close(self) -> bool:
        """Stop handing out batches; whether this call closed the queue."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            self._wake.notify_all()
            return True

    def _take(self, demand_only: bool) -> list[FillJob]:
        """Under the lock: the next job an open waits for, else a batch of background
        jobs of one volume (its repo registered), up to BATCH files or BATCH_BYTES."""
        deferred: list[tuple[int, int, FillJob]] = []
        batch: list[FillJob] = []
        size = 0
        while self._queue:
            item = heapq.heappop(self._queue)
            priority, _, job = item
            if job.done or job.queued != priority:
                continue  # filled, or queued again at a better priority
            if job.running:
                # Queued again while a fill runs (it failed, or it is about to end): once
                # that fill is over, the opens waiting now get one of their own.
                deferred.append(item)
                continue
            if demand_only and priority != DEMAND:
                deferred.append(item)
                break  # the rest are background jobs too
            if batch and (
                priority == DEMAND
                or job.volume_id != batch[0].volume_id
                or len(batch) >= BATCH
                or size >= BATCH_BYTES
            ):
                deferred.append(item)
                break
            job.queued = None
            job.running = True
            batch.append(job)
            size += job.record.size
            if priority == DEMAND:
                break
        for item in deferred:
            heapq.heappush(self._queue, item)
        return batch
