"""Changing a volume without a working copy: what the SDK and the CLI publish directly.

Content goes up first (invisible until referenced), then one log entry publishes every
change at once, after the volume's limits are checked against the state it would make.
A failure anywhere before the publish leaves the volume exactly as it was.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from kvol import fsops
from kvol.content import (
    PACK_THRESHOLD,
    ContentWriter,
    Opener,
    SmallBatch,
    Uploaded,
    read_full,
    same_stat,
)
from kvol.errors import Conflict, InvalidArgument, KvolError, LimitExceeded
from kvol.model import Entry, FileRecord, Limits, Op, PutOp, State
from kvol.progress import Advance
from kvol.repo import Repo, this_writer

DEFAULT_MODE = 0o644
#: Local files read per batch by the calling thread; small ones are packed together, as a
#: working copy's commit does (a pool task per file costs more than reading it).
SMALL_BATCH = 256


@dataclass(frozen=True)
class Pending:
    """One file to upload: from a local path, or from bytes already in memory."""

    remote: str
    local: Path | None = None
    data: bytes | None = None
    #: Permission bits; None keeps the local file's.
    mode: int | None = None
    #: Modification time; None takes the local file's (or now, for bytes).
    mtime_ns: int | None = None
    #: The (resolved) directory tree ``local`` was found in: then ``local`` is opened
    #: without following a link, and only if it is still inside that tree.
    within: Path | None = None
    #: Content already in the store (a file object streamed there when it was added).
    uploaded: Uploaded | None = None

    @property
    def source(self) -> str:
        return str(self.local) if self.local is not None else "<data>"


class _CountingReader:
    """A file handle that reports the bytes read from it (drives progress bars)."""

    def __init__(self, handle: BinaryIO, advance: Advance) -> None:
        self._handle = handle
        self._advance = advance

    def read(self, n: int = -1) -> bytes:
        data = self._handle.read(n)
        self._advance(len(data))
        return data

    def copied(self, n: int) -> None:
        """Bytes moved without :meth:`read` (the store copied them in the kernel)."""
        self._advance(n)

    def fileno(self) -> int:
        return self._handle.fileno()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def upload(
    repo: Repo, items: Iterable[Pending], known: State | None, advance: Advance
) -> list[PutOp]:
    """Send every item's content; return the operations that would publish them.

    ``known`` is the volume's current state: content it already holds is not sent again.
    Local files are read in batches by this thread; the small ones are packed together
    and large ones handed to workers as they are met. Any file that cannot be read, or
    changed while read, fails the whole upload (nothing is published).
    """
    items = list(items)
    if not items:
        return []
    stats: dict[str, os.stat_result] = {}
    known_parts = {r.hash: r.parts for r in known.files.values()} if known is not None else {}

    def opener(item: Pending) -> Opener:
        assert item.local is not None
        local = item.local

        def open_it() -> tuple[BinaryIO, os.stat_result]:
            fd, st = open_local(local, item.within)
            handle = os.fdopen(fd, "rb", buffering=0)
            stats[item.remote] = st
            return cast(BinaryIO, _CountingReader(cast(BinaryIO, handle), advance)), st

        return open_it

    futures: dict[str, Future[Uploaded]] = {}
    batches: list[Future[SmallBatch]] = []
    done: dict[str, Uploaded] = {}
    local = [i for i in items if i.uploaded is None and i.data is None]
    with ContentWriter(repo.store, repo.keys, repo.meta.chunk_size, known=known_parts) as writer:
        for item in items:
            if item.uploaded is not None:
                done[item.remote] = item.uploaded
            elif item.data is not None:
                futures[item.remote] = writer.add_bytes(item.data)
                advance(len(item.data))

        def large(item: Pending) -> None:
            futures[item.remote] = writer.add(opener(item))

        for i in range(0, len(local), SMALL_BATCH):
            reader = _SmallReader(local[i : i + SMALL_BATCH], stats, advance, large)
            batches.append(writer.add_small_files(reader.read))
        writer.finish()
        failures: dict[str, BaseException] = {}
        for batch in batches:
            outcome = batch.result()
            done.update(outcome.uploaded)
            failures.update(outcome.errors)
        for remote, future in futures.items():
            done[remote] = future.result()
        for item in items:
            if item.remote in failures:
                raise failures[item.remote]
        ops: list[PutOp] = []
        for item in items:
            up = done[item.remote]
            if not up.stable:
                raise Conflict(
                    f"{item.source} changed while it was being uploaded; nothing was "
                    "published, try again when it is complete"
                )
            st = stats.get(item.remote)
            mode = item.mode
            if mode is None:
                mode = st.st_mode & 0o7777 if st is not None else DEFAULT_MODE
            mtime_ns = item.mtime_ns
            if mtime_ns is None:
                mtime_ns = st.st_mtime_ns if st is not None else time.time_ns()
            record = FileRecord(up.size, mtime_ns, mode & 0o7777, up.hash, up.parts)
            ops.append(PutOp(item.remote, record))
    return ops


class _SmallReader:
    """Reads one batch of local files in the calling thread: the content of small ones,
    for packing; a large one is handed to ``large`` (a worker reads it). A directory of a
    tree (``within``) is opened once per batch and checked to be inside the tree; its files
    are opened from it without following links."""

    def __init__(
        self,
        items: list[Pending],
        stats: dict[str, os.stat_result],
        advance: Advance,
        large: Callable[[Pending], None],
    ) -> None:
        self._items = items
        self._stats = stats
        self._advance = advance
        self._large = large
        self._dirs: dict[tuple[Path, Path], int] = {}

    def read(self) -> Iterator[tuple[str, bytes | BaseException, bool]]:
        try:
            for item in self._items:
                try:
                    fd = self._open(item)
                except (OSError, KvolError) as exc:
                    yield item.remote, exc, False
                    continue
                try:
                    before = os.fstat(fd)
                    if not stat.S_ISREG(before.st_mode):
                        raise InvalidArgument(
                            f"{item.local} is not a regular file; nothing was published"
                        )
                    if before.st_size > PACK_THRESHOLD:
                        self._large(item)
                        continue
                    data = fsops.read_up_to(fd, PACK_THRESHOLD + 1)
                    after = os.fstat(fd)
                except (OSError, KvolError) as exc:
                    yield item.remote, exc, False
                    continue
                finally:
                    os.close(fd)
                self._stats[item.remote] = before
                self._advance(len(data))
                # One that grew past the pack size since its stat changed meanwhile.
                stable = same_stat(before, after) and len(data) == before.st_size
                yield item.remote, data, stable and len(data) <= PACK_THRESHOLD
        finally:
            for dir_fd in self._dirs.values():
                os.close(dir_fd)

    def _open(self, item: Pending) -> int:
        assert item.local is not None
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
        if item.within is None:
            return os.open(item.local, flags)
        key = (item.local.parent, item.within)
        dir_fd = self._dirs.get(key)
        if dir_fd is None:
            dir_fd = self._dirs[key] = _open_dir_within(item.local.parent, item.within)
        try:
            return os.open(item.local.name, flags | os.O_NOFOLLOW, dir_fd=dir_fd)
        except OSError as exc:
            if _is_link_at(dir_fd, item.local.name):
                raise InvalidArgument(
                    f"{item.local} became a symbolic link while uploading; nothing was published"
                ) from exc
            raise


def _open_dir_within(directory: Path, within: Path) -> int:
    """Open a directory that must (still) be inside ``within``."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check_within(fd, directory, within)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_within(fd: int, local: Path, within: Path) -> None:
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return  # no /proc: the link checks of the names are what there is
    if os.path.commonpath([real, within]) != str(within):
        raise InvalidArgument(
            f"{local} now leads out of {within} (a directory on its way was replaced "
            "by a link); nothing was published"
        )


def _is_link_at(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def from_file_object(
    repo: Repo, remote: str, handle: BinaryIO, mode: int, mtime_ns: int
) -> Pending:
    """A file object's content, read now. Small content is kept, to be packed with the
    batch's other files; larger content goes to the store now, chunk by chunk, so it is
    never held whole in memory (it is invisible until the batch publishes it)."""
    head = read_full(handle, PACK_THRESHOLD + 1)
    if len(head) <= PACK_THRESHOLD:
        return Pending(remote, data=head, mode=mode, mtime_ns=mtime_ns)
    with ContentWriter(repo.store, repo.keys, repo.meta.chunk_size) as writer:
        uploaded = writer.add_stream(handle, head)
    return Pending(remote, mode=mode, mtime_ns=mtime_ns, uploaded=uploaded)


def open_local(local: Path, within: Path | None = None) -> tuple[int, os.stat_result]:
    """Open a local regular file for reading. Never blocks (a FIFO put in its place is
    refused, not waited on); with ``within``, never follows a link at ``local`` and
    refuses a file that is not inside ``within`` any more (its tree changed meanwhile)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    if within is not None:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(local, flags)
    except OSError as exc:
        if within is not None and os.path.islink(local):
            raise InvalidArgument(
                f"{local} became a symbolic link while uploading; nothing was published"
            ) from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"{local} is not a regular file; nothing was published")
        if within is not None:
            try:
                real = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                real = None  # no /proc: the link check above is what there is
            if real is not None and os.path.commonpath([real, within]) != str(within):
                raise InvalidArgument(
                    f"{local} now leads out of {within} (a directory on its way was replaced "
                    "by a link); nothing was published"
                )
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def publish(repo: Repo, state: State, ops: list[Op], message: str | None) -> int:
    """Check the volume's limits against the state ``ops`` would make, then publish."""
    check_limits(repo.meta.limits, state, ops)
    return repo.publish(ops, state.seq, message)


def check_limits(limits: Limits, before: State, ops: list[Op]) -> None:
    """Raise LimitExceeded if applying ``ops`` to ``before`` breaks a limit it grows into.

    Only growth is refused: a volume already over a lowered limit can still shrink.
    """
    if limits == Limits():
        return
    for op in ops:
        if (
            isinstance(op, PutOp)
            and limits.max_file_size is not None
            and op.record.size > limits.max_file_size
        ):
            raise LimitExceeded(
                f"{op.path} is {op.record.size:,} bytes, over the volume's file size limit "
                f"of {limits.max_file_size:,}; nothing was published"
            )
    after = before.copy()
    after.apply(Entry(tuple(ops), 0.0, this_writer(), before.seq), before.seq + 1)
    files_after, files_before = len(after.files), len(before.files)
    if limits.max_files is not None and files_after > max(limits.max_files, files_before):
        raise LimitExceeded(
            f"the volume would hold {files_after:,} files, over its limit of "
            f"{limits.max_files:,}; nothing was published"
        )
    bytes_after, bytes_before = after.total_bytes, before.total_bytes
    if limits.max_bytes is not None and bytes_after > max(limits.max_bytes, bytes_before):
        raise LimitExceeded(
            f"the volume would hold {bytes_after:,} bytes, over its limit of "
            f"{limits.max_bytes:,}; nothing was published"
        )
    if limits.max_files_per_directory is not None:
        old = before.children_counts()
        for directory, count in after.children_counts().items():
            if count > max(limits.max_files_per_directory, old.get(directory, 0)):
                raise LimitExceeded(
                    f"directory /{directory} would hold {count:,} entries, over the volume's "
                    f"limit of {limits.max_files_per_directory:,} per directory; nothing was "
                    "published"
                )
