"""Moving file content to and from a store.

Large files go up as fixed-size chunks ("blobs"), small files of one commit are packed
together into one object ("packs"); both are named by their BLAKE3 digest, so a retried upload
finds its objects already there and identical content is stored once. Everything read
back is checked against its hash before anyone sees it.

Content ids. A file of one part is identified by the digest of its bytes; a file of several
parts by a digest of its size and its parts' ids in BLAKE3's key-derivation mode, another
domain than plain digests: no file's bytes can have the id of another file's part list.
Volumes written before kept an id of the bare part list; it is still accepted when
reading (:func:`matches_content_id`), and reused content must match in size as well.

Renewal protocol (with garbage collection, :mod:`kvol.content_gc`). Objects age by the
store's clock (:meth:`kvol.store.Store.now`). Collection deletes an object only if no
entry of the log refers to it and it is dated more than its grace before the collection
started reading the log, re-checked right before the delete. A commit may publish objects
it did not write just now (orphans of a failed commit, reused by name), or wrote long
ago (a slow upload): every object a commit stores or reuses is noted with when it was
last known fresh, and :func:`renew_before_publish`, called by the publish itself, renews
each one not known fresh within ``REFRESH_AFTER_SECONDS``. The entry then lands within
the same span after that check (a publish is a few requests), so every object it names
is younger than ``2 * REFRESH_AFTER_SECONDS`` when it lands: collection refuses any grace
shorter than that (:func:`min_gc_grace`). A collection that read the log before the entry
landed therefore finds each of its objects within the grace, and one that read it after
finds the entry. Objects that published entries name (content reused from the volume's
own files, a restore's records) need none of this: collection keeps whatever any entry
refers to. On S3 the re-check and the delete are two requests, so a renewal landing in
the instant between them is not seen; on a filesystem the object is moved aside and
looked at there, which closes that window.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from blake3 import blake3

from kvol import grace, metrics
from kvol.errors import Conflict, CorruptData, InvalidArgument, NotFound
from kvol.layout import VolumeKeys
from kvol.model import FileRecord, Part
from kvol.store import FilesystemStore, Store
from kvol.store.base import elapsed_clock

#: Files up to this size are packed with others; larger ones are chunked.
PACK_THRESHOLD = 256 * 1024
#: A pack is sent once it holds this much.
PACK_TARGET = 16 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
#: Full packs being sent at once; the reader waits for a free slot, so a commit that reads
#: faster than the store takes packs holds at most this many (plus the one filling).
PACKS_IN_FLIGHT = 2
#: Chunks of large files a writer holds at once (read and not yet stored), whatever the
#: number of files: one large file is sent this many chunks at a time.
CHUNKS_IN_FLIGHT = 4
#: (kvol.grace; a name of this module too, which tests shorten.)
REFRESH_AFTER_SECONDS = grace.REFRESH_AFTER_SECONDS
#: Key-derivation context of multi-part content ids (a domain of its own, see above).
_MULTI_PART_CONTEXT = "kvol 2026-11-30 content id of a file of several parts"


def min_gc_grace() -> float:
    """The shortest grace garbage collection may use (kvol.grace.shortest_grace)."""
    return grace.shortest_grace(REFRESH_AFTER_SECONDS)


def digest(data: bytes | memoryview | mmap.mmap) -> str:
    """The content address of ``data``: BLAKE3, 256 bits, in hex.

    BLAKE3 rather than sha256 because a commit hashes every byte it publishes: at ~4 GB/s
    a core (sha256: ~1.6 GB/s with SHA extensions) hashing no longer bounds how fast large
    files are committed. It releases the GIL, so chunks hash in parallel threads.
    """
    return blake3(data).hexdigest()


def content_id(parts: Iterable[Part], single_digest: str | None = None) -> str:
    """The id of a file's content: its digest when it has one part, else a digest of its
    size and its parts' ids in a domain of its own (so a large file is identified without
    hashing its bytes twice, and never shares an id with another file's bytes)."""
    parts = list(parts)
    if len(parts) <= 1:
        if single_digest is not None:
            return single_digest
        return parts[0].obj if parts else digest(b"")
    size = sum(p.length for p in parts)
    hasher = blake3(derive_key_context=_MULTI_PART_CONTEXT)
    hasher.update(size.to_bytes(8, "little"))
    for part in parts:
        hasher.update(bytes.fromhex(part.obj))
    return hasher.hexdigest()


def _legacy_content_id(parts: list[Part]) -> str:
    # Multi-part ids of volumes written before the domains were separated.
    return digest(b"".join(bytes.fromhex(p.obj) for p in parts))


def matches_content_id(record: FileRecord) -> bool:
    """Does a multi-part record's id match its parts (either id scheme)? Single-part
    records are checked against their bytes when read."""
    parts = list(record.parts)
    if len(parts) <= 1:
        return True
    return record.hash in (content_id(parts), _legacy_content_id(parts))


# -- freshness of what commits publish (the renewal protocol) -----------------------------


class _Freshness:
    """Objects of this process's commits not yet published: key -> the time (on
    :func:`elapsed_clock`) since which the object is known to be dated (by the store's
    clock) at least that recently."""

    #: Past this many, notes older than a day go: orphans of failed commits, whose
    #: objects a later commit that reuses them notes again anyway.
    LIMIT = 1_000_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}

    def note(self, key: str, since: float) -> None:
        with self._lock:
            if since > self._since.get(key, -math.inf):
                self._since[key] = since
            if len(self._since) > self.LIMIT:
                old = elapsed_clock() - 86400
                self._since = {k: v for k, v in self._since.items() if v > old}

    def stale(self, keys: Iterable[str], threshold: float) -> list[str]:
        before = elapsed_clock() - threshold
        with self._lock:
            return [k for k in keys if self._since.get(k, math.inf) < before]

    def forget(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._since.pop(key, None)


_FRESHNESS: weakref.WeakKeyDictionary[Store, _Freshness] = weakref.WeakKeyDictionary()
_FRESHNESS_LOCK = threading.Lock()


def _freshness(store: Store) -> _Freshness:
    with _FRESHNESS_LOCK:
        found = _FRESHNESS.get(store)
        if found is None:
            found = _FRESHNESS[store] = _Freshness()
        return found


def renew_before_publish(store: Store, keys: Iterable[str]) -> int:
    """Renew every object among ``keys`` that a commit of this process stored or reused and
    that is not known fresh within ``REFRESH_AFTER_SECONDS``; returns how many.

    Called just before an entry naming them is published. An object collected meanwhile
    cannot be renewed: the commit fails with nothing published (a retry sends it again).
    """
    fresh = _freshness(store)
    renewed = 0
    for key in fresh.stale(set(keys), REFRESH_AFTER_SECONDS):
        since = elapsed_clock()
        try:
            store.renew(key)
        except NotFound as exc:
            raise Conflict(
                f"content {key} was collected before the commit that uses it could publish "
                "it; nothing was published: commit again"
            ) from exc
        fresh.note(key, since)
        renewed += 1
    return renewed


def published(store: Store, keys: Iterable[str]) -> None:
    """Objects a published entry names: the log keeps them from now on."""
    _freshness(store).forget(keys)


def hash_file(fd: int, size: int, chunk_size: int) -> str:
    """The content id of an open local file, as an upload would compute it."""
    if size <= PACK_THRESHOLD:
        return digest(os.pread(fd, size + 1, 0))
    chunk_ids = []
    offset = 0
    while True:
        chunk = os.pread(fd, chunk_size, offset)
        if not chunk:
            break
        chunk_ids.append(Part("b", digest(chunk), 0, len(chunk)))
        offset += len(chunk)
    return content_id(chunk_ids)


@dataclass(frozen=True, slots=True)
class Uploaded:
    """What an upload learned of one file: its content location and the stat it saw."""

    hash: str
    parts: tuple[Part, ...]
    size: int
    #: False if the file changed while it was read: it must not be published this time.
    stable: bool
    sent_bytes: int


Opener = Callable[[], tuple[BinaryIO, os.stat_result]]


class KnownContent(Protocol):
    """Content the volume already has: content id -> its parts (a dict will do)."""

    def get(self, content_id: str, /) -> tuple[Part, ...] | None: ...


class ContentWriter:
    """Uploads the files of one commit. Use as a context manager; ``add`` returns futures."""

    def __init__(
        self,
        store: Store,
        keys: VolumeKeys,
        chunk_size: int,
        known: KnownContent | None = None,
        concurrency: int = 8,
    ) -> None:
        self.store = store
        self.keys = keys
        self.chunk_size = chunk_size
        #: content id -> parts of content the volume already has: reused, not sent again.
        self.known = known or {}
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kvol-up")
        # Packs go out on threads of their own: a worker that fills a pack may wait for
        # a slot, which a queued send behind it on the same pool would never free.
        self._pack_pool = ThreadPoolExecutor(
            max_workers=PACKS_IN_FLIGHT, thread_name_prefix="kvol-pack"
        )
        self._pack_slots = threading.Semaphore(PACKS_IN_FLIGHT)
        # Chunks are sent by threads of their own too: the workers reading large files
        # wait for chunk slots, which only these senders free.
        self._chunk_pool = ThreadPoolExecutor(
            max_workers=CHUNKS_IN_FLIGHT, thread_name_prefix="kvol-chunk"
        )
        self._chunk_slots = threading.Semaphore(CHUNKS_IN_FLIGHT)
        self._lock = threading.Lock()
        self._pack = bytearray()
        self._pack_waiters: list[_Waiter] = []
        self._pack_index: dict[str, tuple[int, int]] = {}
        self._tasks: list[Future[None]] = []
        self._pack_sends: list[Future[None]] = []

    def __enter__(self) -> ContentWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pack_pool.shutdown(wait=True, cancel_futures=True)
        self._chunk_pool.shutdown(wait=True, cancel_futures=True)

    def add(self, open_file: Opener) -> Future[Uploaded]:
        """Upload one file; the future resolves when its content is in the store."""
        result: Future[Uploaded] = Future()
        self._tasks.append(self._pool.submit(self._upload, open_file, result))
        return result

    def add_bytes(self, data: bytes) -> Future[Uploaded]:
        """Upload content that is already in memory (SDK uploads from file objects)."""
        result: Future[Uploaded] = Future()
        if len(data) <= PACK_THRESHOLD:
            self._small(result, data, stable=True)
        else:
            self._tasks.append(self._pool.submit(self._settle, result, self._upload_bytes, data))
        return result

    def add_small_files(self, read: SmallReader) -> Future[SmallBatch]:
        """Upload a batch of small files, with no per-file future or task: ``read`` yields
        ``(name, content or the error reading it, stable)`` and runs in the calling thread,
        which is faster than workers would be (many short reads and hashes are mostly
        GIL-bound; workers meanwhile send packs and large files). The future resolves
        once every file of the batch is in the store."""
        result: Future[SmallBatch] = Future()
        self._small_batch(read, result)
        return result

    def add_stream(self, handle: BinaryIO, head: bytes = b"") -> Uploaded:
        """Upload everything a file object still holds (after ``head``, bytes already read
        from it), returning once it is all in the store. It is read here a chunk at a
        time, so memory stays a few chunks whatever its size."""
        pending = head

        def next_chunk() -> bytes:
            nonlocal pending
            if len(pending) >= self.chunk_size:
                chunk, pending = pending[: self.chunk_size], pending[self.chunk_size :]
                return chunk
            chunk, pending = pending + read_full(handle, self.chunk_size - len(pending)), b""
            return chunk

        parts, sent = self._send_chunks(next_chunk)
        size = sum(p.length for p in parts)
        return Uploaded(content_id(parts), tuple(parts), size, True, sent)

    def finish(self) -> None:
        """Wait until every file added so far is in the store; raise the first failure."""
        for task in self._tasks:
            task.result()
        with self._lock:
            full = self._take_pack_locked()
        if full is not None:
            self._send_pack_later(*full)
        for task in self._pack_sends:
            task.result()

    # -- one file ---------------------------------------------------------------------

    @staticmethod
    def _settle(result: Future[Uploaded], fn: Callable[..., Uploaded], *args: object) -> None:
        try:
            result.set_result(fn(*args))
        except BaseException as exc:
            result.set_exception(exc)
            raise

    def _upload(self, open_file: Opener, result: Future[Uploaded]) -> None:
        try:
            handle, before = open_file()
            with handle:
                if before.st_size <= PACK_THRESHOLD:
                    data = handle.read(PACK_THRESHOLD + 1)
                    after = os.fstat(handle.fileno())
                    stable = same_stat(before, after) and len(data) == before.st_size
                    # Packed files resolve when their pack is sent; this thread moves on.
                    self._small(result, data, stable)
                    return
                uploaded = self._chunked(handle, before)
            result.set_result(uploaded)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            # Removed or replaced since the scan: that file's result says so, and the
            # rest of the commit goes on (the next scan sees what is there now).
            if not result.done():
                result.set_exception(exc)
        except BaseException as exc:
            if not result.done():
                result.set_exception(exc)
            raise

    def _chunked(self, handle: BinaryIO, before: os.stat_result) -> Uploaded:
        store = self.store
        # The fast path writes objects without _put_staged: a store class that overrides
        # it (to watch or change writes) keeps seeing every object through it.
        if (
            isinstance(store, FilesystemStore)
            and type(store)._put_staged is FilesystemStore._put_staged
        ):
            # The kernel moves the bytes past the handle: one that counts them is told.
            copied = getattr(handle, "copied", None)
            return self._chunked_in_kernel(store, handle.fileno(), before, copied)
        parts, sent = self._send_chunks(lambda: read_full(handle, self.chunk_size))
        size = sum(p.length for p in parts)
        after = os.fstat(handle.fileno())
        stable = same_stat(before, after) and size == before.st_size
        return Uploaded(content_id(parts), tuple(parts), size, stable, sent)

    def _chunked_in_kernel(
        self,
        store: FilesystemStore,
        fd: int,
        before: os.stat_result,
        copied_cb: Callable[[int], None] | None = None,
    ) -> Uploaded:
        """Chunks copied file to store by the kernel and hashed where they landed: the
        bytes never pass through Python, which halves the memory traffic of a commit."""
        parts: list[Part] = []
        sent = 0
        size = 0
        fresh_after = store.now() - REFRESH_AFTER_SECONDS
        freshness = _freshness(store)
        digests: list[str] = []

        def key_of(data: mmap.mmap | bytes) -> str:
            digests.append(digest(data))
            return self.keys.blob(digests[-1])

        while True:
            started = elapsed_clock()
            copied = store.copy_in(fd, size, self.chunk_size, key_of, fresh_after)
            if copied is None:
                break
            key, length, created = copied
            # A kept object was dated after fresh_after: fresh as of that, at worst.
            freshness.note(key, started if created else started - REFRESH_AFTER_SECONDS)
            if created:
                sent += length
                metrics.UPLOADED_BYTES.inc(length)
            parts.append(Part("b", digests[-1], 0, length))
            size += length
            if copied_cb is not None:
                copied_cb(length)
        after = os.fstat(fd)
        stable = same_stat(before, after) and size == before.st_size
        return Uploaded(content_id(parts), tuple(parts), size, stable, sent)

    def _send_chunks(self, next_chunk: Callable[[], bytes]) -> tuple[list[Part], int]:
        """Read chunks in this thread (``next_chunk`` gives b"" at the end) and send them
        on the chunk senders; returns the parts and the bytes sent. A chunk is read only
        once one of the writer's ``CHUNKS_IN_FLIGHT`` slots is free, so the chunks held at
        once are bounded across all the files of the writer."""
        parts: list[Part] = []
        sends: list[Future[int]] = []
        failed: list[BaseException] = []
        slots = self._chunk_slots

        def stored(future: Future[int]) -> None:
            slots.release()
            exc = None if future.cancelled() else future.exception()
            if exc is not None:
                failed.append(exc)

        while True:
            slots.acquire()
            try:
                # After a failed send nothing more is read: the failure is raised below.
                chunk = b"" if failed else next_chunk()
                if chunk:
                    h = digest(chunk)
                    future = self._chunk_pool.submit(self._put_blob, h, chunk)
            except BaseException:
                slots.release()
                raise
            if not chunk:
                slots.release()
                break
            parts.append(Part("b", h, 0, len(chunk)))
            del chunk  # the sender holds it until stored
            future.add_done_callback(stored)
            sends.append(future)
        sent = 0
        for future in sends:
            sent += future.result()
        return parts, sent

    def _reusable(self, h: str, size: int) -> tuple[Part, ...] | None:
        """Parts of known content with these bytes: one part of this very size (its id is
        the digest of its bytes), never a part list that happens to carry the same id."""
        known = self.known.get(h)
        if known is None or len(known) != 1 or known[0].length != size:
            return None
        return known

    def _small(self, result: Future[Uploaded], data: bytes, stable: bool) -> None:
        h = digest(data)
        known = self._reusable(h, len(data))
        if known is not None:
            result.set_result(Uploaded(h, known, len(data), stable, 0))
            return
        self._into_pack(_resolve_future(result), data, h, stable)

    def _upload_bytes(self, data: bytes) -> Uploaded:
        parts: list[Part] = []
        sent = 0
        view = memoryview(data)
        for offset in range(0, len(data), self.chunk_size):
            chunk = view[offset : offset + self.chunk_size]
            h = digest(chunk)
            sent += self._put_blob(h, chunk)
            parts.append(Part("b", h, 0, len(chunk)))
        return Uploaded(content_id(parts), tuple(parts), len(data), True, sent)

    def _put_blob(self, h: str, chunk: bytes | memoryview) -> int:
        return self._put_object(self.keys.blob(h), chunk)

    def _put_object(self, key: str, data: bytes | memoryview) -> int:
        """Send an object unless the store has a fresh copy; returns the bytes sent.

        An existing object may be an orphan of a failed commit that garbage collection is
        about to remove; one older than the renewal threshold (store clock) is written
        again. Either way it is noted with its age, and renewed again before the publish
        if the commit outlasts the threshold (see the renewal protocol above).
        """
        freshness = _freshness(self.store)
        try:
            info = self.store.head(key)
            age = self.store.now() - info.mtime
            if age < REFRESH_AFTER_SECONDS:
                freshness.note(key, elapsed_clock() - max(age, 0.0))
                return 0
        except NotFound:
            pass
        started = elapsed_clock()
        self.store.put(key, data, staged=True)
        freshness.note(key, started)
        metrics.UPLOADED_BYTES.inc(len(data))
        return len(data)

    # -- packs ------------------------------------------------------------------------

    def _small_batch(self, read: SmallReader, result: Future[SmallBatch]) -> None:
        batch = SmallBatch(result, self._lock)
        try:
            for name, data, stable in read():
                if isinstance(data, BaseException):
                    batch.errors[name] = data
                    continue
                h = digest(data)
                known = self._reusable(h, len(data))
                if known is not None:
                    batch.uploaded[name] = Uploaded(h, known, len(data), stable, 0)
                    continue
                with self._lock:
                    batch.pending += 1
                self._into_pack(batch.resolver(name), data, h, stable)
        except BaseException as exc:
            batch.fail(exc)
            raise
        batch.read_all()

    def _into_pack(self, done: _Resolve, data: bytes, h: str, stable: bool) -> None:
        with self._lock:
            if h in self._pack_index:
                offset, length = self._pack_index[h]
            else:
                offset, length = len(self._pack), len(data)
                self._pack += data
                self._pack_index[h] = (offset, length)
            self._pack_waiters.append((done, offset, length, h, stable))
            full = self._take_pack_locked() if len(self._pack) >= PACK_TARGET else None
        if full is not None:
            self._send_pack_later(*full)

    def _take_pack_locked(self) -> tuple[bytearray, list[_Waiter]] | None:
        if not self._pack_waiters:
            return None
        taken = self._pack, self._pack_waiters
        self._pack = bytearray()
        self._pack_waiters = []
        self._pack_index = {}
        return taken

    def _send_pack_later(self, pack: bytearray, waiters: list[_Waiter]) -> None:
        # Waits (outside the lock) while PACKS_IN_FLIGHT packs are being sent.
        self._pack_slots.acquire()
        try:
            self._pack_sends.append(self._pack_pool.submit(self._send_pack, pack, waiters))
        except BaseException:
            self._pack_slots.release()
            raise

    def _send_pack(self, pack: bytearray, waiters: list[_Waiter]) -> None:
        try:
            # Sent as it was filled: no copy of up to PACK_TARGET bytes.
            view = memoryview(pack)
            h = digest(view)
            sent = self._put_object(self.keys.pack(h), view)
        except BaseException as exc:
            for done, *_ in waiters:
                done(exc)
            raise
        finally:
            self._pack_slots.release()
        for i, (done, offset, length, file_hash, stable) in enumerate(waiters):
            part = Part("p", h, offset, length)
            done(Uploaded(file_hash, (part,), length, stable, sent if i == 0 else 0))


#: Called with what became of one packed file: where it went, or why it did not.
_Resolve = Callable[[Uploaded | BaseException], None]
_Waiter = tuple[_Resolve, int, int, str, bool]
#: Reads a batch of small files: (name, content or the error reading it, stable).
SmallReader = Callable[[], Iterable[tuple[str, bytes | BaseException, bool]]]


def _resolve_future(future: Future[Uploaded]) -> _Resolve:
    def done(outcome: Uploaded | BaseException) -> None:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    return done


class SmallBatch:
    """The outcome of :meth:`ContentWriter.add_small_files`, by name."""

    def __init__(self, future: Future[SmallBatch], lock: threading.Lock) -> None:
        self.uploaded: dict[str, Uploaded] = {}
        #: Files that could not be read (gone, replaced...): the caller decides.
        self.errors: dict[str, BaseException] = {}
        self.pending = 0
        self._future = future
        self._lock = lock
        self._reading = True

    def resolver(self, name: str) -> _Resolve:
        def done(outcome: Uploaded | BaseException) -> None:
            if isinstance(outcome, BaseException):
                self.fail(outcome)
                return
            with self._lock:
                self.uploaded[name] = outcome
                self.pending -= 1
                self._settle_locked()

        return done

    def read_all(self) -> None:
        with self._lock:
            self._reading = False
            self._settle_locked()

    def _settle_locked(self) -> None:
        if not self._reading and self.pending == 0 and not self._future.done():
            self._future.set_result(self)

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._future.done():
                return
            self._future.set_exception(exc)


def read_full(handle: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes of a file object, fewer only at its end (a pipe or a raw file
    object may return less per read than asked)."""
    pieces: list[bytes] = []
    left = n
    while left > 0:
        data = handle.read(left)
        if data is None:
            raise InvalidArgument("the file object has no data ready (non-blocking): nothing read")
        if not isinstance(data, bytes | bytearray):
            raise InvalidArgument("a binary file object is needed (open it with 'rb')")
        if not data:
            break
        pieces.append(bytes(data) if isinstance(data, bytearray) else data)
        left -= len(data)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def same_stat(a: os.stat_result, b: os.stat_result) -> bool:
    """Did a file stay the same between two stats (as far as a reader can tell)?"""
    return (a.st_size, a.st_mtime_ns, a.st_ino) == (b.st_size, b.st_mtime_ns, b.st_ino)


class ContentReader:
    """Reads file content back, verified, from the store or a local cache.

    When many small files of one pack are read together (``prefetch``), the whole pack
    is fetched once instead of one ranged read per file.
    """

    #: Fetch a whole pack when at least this fraction of it is wanted.
    WHOLE_PACK_FRACTION = 0.25

    def __init__(self, store: Store, keys: VolumeKeys) -> None:
        self.store = store
        self.keys = keys
        self._packs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def prefetch(self, records: Iterable[FileRecord]) -> None:
        wanted: dict[str, int] = {}
        extent: dict[str, int] = {}
        for record in records:
            for part in record.parts:
                if part.kind == "p":
                    wanted[part.obj] = wanted.get(part.obj, 0) + part.length
                    extent[part.obj] = max(extent.get(part.obj, 0), part.offset + part.length)
        for pack, want in wanted.items():
            if pack in self._packs:
                continue
            if want >= self.WHOLE_PACK_FRACTION * extent[pack]:
                data = self.store.get(self.keys.pack(pack))
                if digest(data) != pack:
                    raise CorruptData(f"pack {pack} failed its hash")
                metrics.DOWNLOADED_BYTES.inc(len(data))
                with self._lock:
                    self._packs[pack] = data

    def release(self) -> None:
        with self._lock:
            self._packs.clear()

    def iter_parts(self, record: FileRecord, path: str | None = None) -> Iterator[bytes]:
        """The file's content, part by part, each verified before it is yielded. A failed
        check names the volume file ``path``, if given: the one to remove or restore."""
        try:
            if not record.adds_up():
                raise CorruptData("file record's parts do not add up to its size")
            if not matches_content_id(record):
                raise CorruptData("file record's parts do not match its content id")
            for part in record.parts:
                yield self._read_part(part, record)
        except CorruptData as exc:
            if path is None:
                raise
            raise CorruptData(f"volume file /{path.lstrip('/')} is unreadable: {exc}") from exc

    def read(self, record: FileRecord) -> bytes:
        return b"".join(self.iter_parts(record))

    def read_part(self, record: FileRecord, index: int) -> bytes:
        """Part ``index`` of the file's content, verified (and the record's parts against
        its content id, so that a part list that is not the file's fails)."""
        if not matches_content_id(record):
            raise CorruptData("file record's parts do not match its content id")
        return self._read_part(record.parts[index], record)

    def write_to(self, record: FileRecord, fd: int, path: str | None = None) -> None:
        for data in self.iter_parts(record, path):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]

    def _read_part(self, part: Part, record: FileRecord) -> bytes:
        if part.kind == "b":
            try:
                data = self.store.get(self.keys.blob(part.obj))
            except NotFound as exc:
                raise CorruptData(f"content {part.obj} is missing from the store") from exc
            metrics.DOWNLOADED_BYTES.inc(len(data))
            if len(data) != part.length or digest(data) != part.obj:
                raise CorruptData(f"content {part.obj} failed its hash")
            if len(record.parts) == 1 and part.obj != record.hash:
                raise CorruptData("file record's content id does not match its content")
            return data
        with self._lock:
            pack = self._packs.get(part.obj)
        if pack is not None:
            data = pack[part.offset : part.offset + part.length]
        else:
            try:
                data = self.store.get_range(self.keys.pack(part.obj), part.offset, part.length)
            except NotFound as exc:
                raise CorruptData(f"pack {part.obj} is missing from the store") from exc
            metrics.DOWNLOADED_BYTES.inc(len(data))
        if len(data) != part.length or digest(data) != record.hash:
            raise CorruptData("packed content failed its hash")
        return data
