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
import errno
import heapq
import itertools
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from kvol import fsops, metrics
from kvol.content import ContentReader
from kvol.errors import CorruptData, InvalidArgument, KvolError
from kvol.fangroup import (
    FAN_MARK_ADD,
    FAN_MARK_REMOVE,
    FAN_OPEN_PERM,
    FAN_PRE_ACCESS,
    HeldGroup,
    listen,
    mark,
    respond,
)
from kvol.model import FileRecord
from kvol.repo import Repo

log = logging.getLogger(__name__)

MASK = FAN_OPEN_PERM | FAN_PRE_ACCESS

#: The xattr that makes an entry a placeholder (its data is not there yet).
PLACEHOLDER_XATTR = "trusted.kvol.lazy"
#: The cache's directory of manifests (what each placeholder must be filled with).
STATE_DIR = ".lazy"
#: Directories where older versions made placeholders before they got their names.
SPOOL_PREFIX = "spool-"

#: Records (and bytes) per background batch: small files of one pack come in one request,
#: and an open never waits long behind a batch that holds its file.
BATCH = 64
BATCH_BYTES = 8 << 20

_DEMAND = 0
_BACKGROUND = 1
#: How long an open of a placeholder waits for its volume to be registered before it
#: fails (EIO). After a restart a volume is registered when a pod that uses it is
#: published again, within seconds; one no pod uses any more never is, and its opens
#: must not hang for ever.
UNREGISTERED_WAIT_SECONDS = 120.0
#: How often opens waiting for an unregistered volume are looked at.
UNREGISTERED_CHECK_SECONDS = 5.0


def entry_name(record: FileRecord) -> str:
    """The name of the content cache's entry of ``record``'s file: its content, and the
    mode and mtime the entry carries."""
    name = f"{record.hash}.{fsops.safe_mode(record.mode):o}.{record.mtime_ns}"
    # A record whose parts do not add up to its size (older versions published some) has
    # an entry of its own, which no fill completes: sharing that of its content, it would
    # give a good file its size, or fail the good file's reads with its own.
    return name if record.adds_up() else f"{name}.{record.size}"


def is_placeholder(path: str | Path, *, follow: bool = False) -> bool:
    """Whether the cache entry at ``path`` still waits for its data (reads no data)."""
    try:
        os.getxattr(path, PLACEHOLDER_XATTR, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.ENOENT):
            return False
        raise
    return True


def _is_placeholder_fd(fd: int) -> bool:
    try:
        os.getxattr(fd, PLACEHOLDER_XATTR)
    except OSError as exc:
        # Not knowing is taken as a placeholder: an open that fails, never zeros read.
        return exc.errno not in (errno.ENODATA, errno.ENOTSUP)
    return True


def _mark(group: int, flags: int, fd: int, path: str | None = None) -> None:
    mark(group, flags, MASK, fd, path)


@dataclass(eq=False)
class _Job:
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


class LazyFiller:
    """The fanotify group that fills one content cache's placeholders.

    ``place`` makes placeholders; an open of one waits for its fill; ``prefetch`` queues
    fills in the background. Fills need the volume's :class:`Repo`: ``register`` it (a
    restarted filler marks placeholders at once, and fills them once their volume is
    registered; an open before that waits for it).
    """

    def __init__(self, cache_root: str | Path, workers: int = 4) -> None:
        if workers < 2:
            raise InvalidArgument("a lazy filler needs 2 workers or more (one serves opens only)")
        self.root = Path(cache_root)
        self.state = self.root / STATE_DIR
        self.workers = workers
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[tuple[int, int], _Job] = {}
        self._by_path: dict[Path, _Job] = {}
        self._queue: list[tuple[int, int, _Job]] = []
        self._order = itertools.count()
        self._repos: dict[str, Repo] = {}
        #: Jobs queued before their volume's repo was registered (after a restart).
        self._parked: dict[str, list[_Job]] = {}
        self._manifest_left: dict[Path, int] = {}
        self._filler_tids: set[int] = set()
        self._group = -1
        self._stop_r, self._stop_w = -1, -1
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._held: HeldGroup | None = None
        self.failures = 0

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> LazyFiller:
        """Take the cache's group over from its holder (a previous filler died) or open a
        new one with a holder, start the listener and the fillers, and mark every
        placeholder a previous process left unfilled."""
        self._held = HeldGroup(self.state, f"the placeholders of {self.root}").open(MASK)
        self._group = self._held.fd
        try:
            self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
            self._resume()
        except BaseException:
            self._close_fds()
            raise
        listener = threading.Thread(
            target=listen,
            args=(self._group, self._stop_r, self._on_event),
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
        with self._lock:
            if self._stopping or self._group < 0:
                if release:
                    self._release_holder()  # stopped before, the group left to the holder
                return
            self._stopping = True
            self._wake.notify_all()
        os.write(self._stop_w, b"x")
        for t in self._threads:
            t.join()
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
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
        self._stop_r = self._stop_w = self._group = -1
        if self._held is not None:
            self._held.close()

    def register(self, repo: Repo) -> None:
        """Fills of ``repo``'s volume may use it from now on."""
        with self._lock:
            self._repos[repo.volume_id] = repo
            for job in self._parked.pop(repo.volume_id, []):
                if job.queued is not None and not job.done:
                    heapq.heappush(self._queue, (job.queued, next(self._order), job))
            self._wake.notify_all()

    def claim(self, repo: Repo, paths: Iterable[Path]) -> None:
        """These entries are ``repo``'s files too: a placeholder among them whose own
        volume is not registered (left by a previous process) may be filled from
        ``repo`` (the content is the same, by its id), so nobody waits on a volume that
        may never be registered again."""
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

    # -- placing -------------------------------------------------------------------------

    def place(
        self, repo: Repo, items: list[tuple[Path, Path, FileRecord]], concurrency: int = 4
    ) -> list[Path]:
        """Put each ``(name, entry, record)``'s file at ``name``, a path in a directory
        nobody else can see yet (a snapshot being built): a link of the cache's ``entry``
        where it exists, else a new placeholder, linked to ``entry`` too. Returns the
        entries placed. The manifest is durable before any placeholder appears in the cache.
        """
        self.claim(repo, (e for _, e, _ in items))
        names: dict[Path, list[Path]] = {}
        records: dict[Path, FileRecord] = {}
        for name, entry, record in items:
            names.setdefault(entry, []).append(name)
            records.setdefault(entry, record)
        # What the cache has is linked (the caller holds those entries against eviction).
        todo = {e: r for e, r in records.items() if not os.path.lexists(e)}
        manifest = self.state / f"{secrets.token_hex(8)}.json"
        if todo:
            body = {
                "format": 1,
                "volume": repo.volume_id,
                "records": [r.to_list() for r in todo.values()],
            }
            fsops.write_atomically(manifest, json.dumps(body).encode())
            with self._lock:
                # Counted before any is placed: a fill that ends early must not drop it.
                self._manifest_left[manifest] = len(todo)
        for directory in {str(e.parent) for e in todo}:
            os.makedirs(directory, exist_ok=True)
        volume_id = repo.volume_id
        work = list(records.items())
        # The system calls release the GIL: a few threads make a large tree faster, and
        # each takes a run of files, so that handing them out costs little.
        step = max(1, -(-len(work) // (concurrency * 8)))
        placed: list[Path] = []  # appended from the pool's threads (atomic)

        def run(start: int) -> None:
            for entry, record in work[start : start + step]:
                if entry not in todo:
                    for name in names[entry]:
                        os.link(entry, name)
                elif self._place_one(names[entry], entry, record, volume_id, manifest):
                    placed.append(entry)

        try:
            with ThreadPoolExecutor(concurrency, thread_name_prefix="kvol-lazy-place") as pool:
                for _ in pool.map(run, range(0, len(work), step)):
                    pass
        finally:
            if todo:
                with self._lock:
                    left = self._manifest_left.get(manifest, 0) - (len(todo) - len(placed))
                    self._manifest_left[manifest] = left
                if left <= 0:
                    self._drop_manifest(manifest)
        return placed

    def _place_one(
        self, names: list[Path], entry: Path, record: FileRecord, volume_id: str, manifest: Path
    ) -> bool:
        first, rest = names[0], names[1:]
        # Made and marked at a name nobody can see yet (inodes made side by side also
        # cost ext4 far less than inodes made across the cache's hashed directories):
        # nobody can open it unwatched.
        fd = os.open(first, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, record.size)
            os.setxattr(fd, PLACEHOLDER_XATTR, b"1")
            os.fchmod(fd, fsops.safe_mode(record.mode))
            os.utime(fd, ns=(record.mtime_ns, record.mtime_ns))
            _mark(self._group, FAN_MARK_ADD, fd)
            st = os.fstat(fd)
            job = _Job(entry, volume_id, record, (st.st_dev, st.st_ino), manifest)
            with self._lock:
                self._jobs[job.inode] = job
                self._by_path[entry] = job
            try:
                # A link, never a rename: an entry that appeared meanwhile is never
                # replaced (snapshots may link its inode).
                os.link(first, entry)
            except FileExistsError:
                with self._lock:
                    del self._jobs[job.inode]
                    if self._by_path.get(entry) is job:
                        del self._by_path[entry]
                _mark(self._group, FAN_MARK_REMOVE, fd)
                os.unlink(first)
                for name in names:
                    os.link(entry, name)
                return False
        finally:
            os.close(fd)
        for name in rest:
            os.link(first, name)
        return True

    def _resume(self) -> None:
        """Mark every placeholder the manifests name (a previous process left them)."""
        for spool in self.state.glob(f"{SPOOL_PREFIX}*"):
            # Left by an older version's killed place(): what got its name is in the
            # cache, the rest is not.
            shutil.rmtree(spool, ignore_errors=True)
        unreadable = 0
        for manifest in sorted(self.state.glob("*.json")):
            try:
                body = json.loads(manifest.read_bytes())
                volume_id = body["volume"]
                # As the log has them: a record whose parts do not add up to its size
                # (older versions published some) gets a job whose fills fail.
                records = [FileRecord.from_list(r, check_size=False) for r in body["records"]]
            except (ValueError, KeyError, TypeError, CorruptData):
                log.warning("unreadable lazy manifest %s", manifest)
                unreadable += 1
                continue
            left = 0
            for record in records:
                path = self._entry_path(record)
                inode = self._watch(path)
                if inode is None:
                    continue
                job = _Job(path, volume_id, record, inode, manifest)
                with self._lock:
                    self._jobs[job.inode] = job
                    self._by_path[path] = job
                    self._push(job, _BACKGROUND)
                left += 1
            if left:
                self._manifest_left[manifest] = left
            else:
                self._drop_manifest(manifest)
        if unreadable:
            self._mark_orphans()

    def _mark_orphans(self) -> None:
        """Mark the placeholders no manifest names (theirs was unreadable): nothing can
        fill them, and unmarked they would read as zeros. Their opens fail instead (see
        :meth:`_on_event`) until the cache evicts them."""
        orphans = 0
        for directory in self.root.glob("??"):
            if not directory.is_dir() or directory.is_symlink():
                continue  # not a directory of entries (the cache makes none such)
            for entry in directory.iterdir():
                if entry not in self._by_path and self._watch(entry) is not None:
                    orphans += 1
        if orphans:
            log.warning(
                "%d placeholders of %s have no readable manifest: their opens fail",
                orphans,
                self.root,
            )

    def _watch(self, path: Path) -> tuple[int, int] | None:
        """Mark the placeholder at ``path``; its (device, inode), or None where there is
        none (gone, or filled)."""
        try:
            # O_PATH: no open event (an adopted group still has its marks, and nobody
            # answers them yet).
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            if not is_placeholder(f"/proc/self/fd/{fd}", follow=True):
                return None
            _mark(self._group, FAN_MARK_ADD, -1, f"/proc/self/fd/{fd}")
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return st.st_dev, st.st_ino

    def _entry_path(self, record: FileRecord) -> Path:
        return self.root / record.hash[:2] / entry_name(record)

    # -- filling -------------------------------------------------------------------------

    def prefetch(self, paths: Iterable[Path]) -> None:
        """Queue the fills of these placeholders behind any an open waits for."""
        with self._lock:
            for path in paths:
                job = self._by_path.get(path)
                if job is not None and not job.done:
                    self._push(job, _BACKGROUND)
            self._wake.notify_all()

    def pending(self) -> int:
        """Placeholders not filled yet."""
        with self._lock:
            return sum(1 for j in self._jobs.values() if not j.done)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or being filled; whether that happened in time."""
        with self._wake:
            return self._wake.wait_for(
                lambda: not self._queue and not any(j.running for j in self._jobs.values()),
                timeout,
            )

    def _push(self, job: _Job, priority: int) -> None:
        # Under self._lock. A job queued twice is filled once (the later pop skips it).
        if job.queued is not None and job.queued <= priority:
            return
        job.queued = priority
        if job.volume_id not in self._repos:
            self._parked.setdefault(job.volume_id, []).append(job)  # until registered
            return
        heapq.heappush(self._queue, (priority, next(self._order), job))
        self._wake.notify_all()

    def _work(self, demand_only: bool) -> None:
        self._filler_tids.add(threading.get_native_id())
        while True:
            with self._wake:
                while True:
                    if self._stopping:
                        return
                    batch = self._take(demand_only)
                    if batch:
                        break
                    self._wake.wait()
            try:
                self._fill_batch(batch)
            finally:
                with self._wake:
                    for job in batch:
                        job.running = False
                    self._wake.notify_all()

    def _fail_unregistered_waits(self) -> None:
        """Fail the opens that waited longer than UNREGISTERED_WAIT_SECONDS for their
        volume to be registered. Their placeholders stay (a later registration fills
        them, and the next open reads them)."""
        while True:
            with self._wake:
                if self._wake.wait_for(lambda: self._stopping, UNREGISTERED_CHECK_SECONDS):
                    return
                parked = [job for jobs in self._parked.values() for job in jobs]
            limit = time.monotonic() - UNREGISTERED_WAIT_SECONDS
            for job in parked:
                with job.lock:
                    late = [w for w in job.waiters if w[1] <= limit]
                    if not late or job.volume_id in self._repos:
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

    def _take(self, demand_only: bool) -> list[_Job]:
        """Under the lock: the next job an open waits for, else a batch of background
        jobs of one volume (its repo registered), up to BATCH files or BATCH_BYTES."""
        deferred: list[tuple[int, int, _Job]] = []
        batch: list[_Job] = []
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
            if demand_only and priority != _DEMAND:
                deferred.append(item)
                break  # the rest are background jobs too
            if batch and (
                priority == _DEMAND
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
            if priority == _DEMAND:
                break
        for item in deferred:
            heapq.heappush(self._queue, item)
        return batch

    def _fill_batch(self, batch: list[_Job]) -> None:
        with self._lock:
            repo = self._repos[batch[0].volume_id]
        reader = repo.reader()
        try:
            with contextlib.suppress(KvolError, OSError):
                reader.prefetch(j.record for j in batch if len(batch) > 1)
            for job in batch:
                ok = False
                try:
                    ok = self._fill(job, reader)
                except _Gone:
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

    def _fill(self, job: _Job, reader: ContentReader) -> bool:
        """Fill the job's inode; raises _Gone if it is no longer the entry (evicted)."""
        try:
            fd = os.open(job.path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise _Gone from None
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != job.inode:
                raise _Gone
            _write_parts(reader, job.record, fd)
            os.fsync(fd)
            # The writes moved the mtime, which is part of the entry's identity.
            os.utime(fd, ns=(job.record.mtime_ns, job.record.mtime_ns))
            with contextlib.suppress(OSError):
                os.removexattr(fd, PLACEHOLDER_XATTR)
            os.fsync(fd)
            with contextlib.suppress(OSError):
                _mark(self._group, FAN_MARK_REMOVE, fd)
        finally:
            os.close(fd)
        return True

    def _forget(self, job: _Job) -> None:
        # Evicted: only entries no snapshot links are, so nobody can open that inode now.
        with job.lock:
            job.done = True
            waiters, job.waiters = job.waiters, []
        self._answer_held(waiters, ok=False)
        self._retire(job)

    def _finish(self, job: _Job, ok: bool) -> None:
        with job.lock:
            if ok:
                job.done = True
            waiters, job.waiters = job.waiters, []
        self._answer_held(waiters, ok=ok)
        if ok:
            self._retire(job)

    def _retire(self, job: _Job) -> None:
        with self._lock:
            self._jobs.pop(job.inode, None)
            if self._by_path.get(job.path) is job:
                del self._by_path[job.path]
            left = self._manifest_left.get(job.manifest, 1) - 1
            self._manifest_left[job.manifest] = left
        if left <= 0:
            self._drop_manifest(job.manifest)

    def _drop_manifest(self, manifest: Path) -> None:
        with self._lock:
            self._manifest_left.pop(manifest, None)
        manifest.unlink(missing_ok=True)

    # -- events --------------------------------------------------------------------------

    def _answer(self, fds: list[int], *, ok: bool) -> None:
        for fd in fds:
            respond(self._group, fd, ok)

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
        with self._lock:
            job = self._jobs.get((st.st_dev, st.st_ino))
        if job is None:
            # Filled meanwhile (its mark on the way out), else a placeholder nothing will
            # fill: its data was never written, so the open fails rather than read zeros.
            filled = not _is_placeholder_fd(fd)
            if not filled:
                self.failures += 1
            self._answer([fd], ok=filled)
            return
        with job.lock:
            if not job.done:
                job.waiters.append((fd, time.monotonic()))
                with self._lock:
                    self._push(job, _DEMAND)
                return
        self._answer([fd], ok=True)


class _Gone(Exception):
    """The placeholder is no longer the cache's entry."""


def _write_parts(reader: ContentReader, record: FileRecord, fd: int) -> None:
    offset = 0
    for data in reader.iter_parts(record):  # each part verified before it is written
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n
    if offset != record.size:
        raise CorruptData(f"content of {record.hash} has {offset} bytes, not {record.size}")
