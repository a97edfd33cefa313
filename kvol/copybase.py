"""What every working copy is made of: its place, its index, its lock, and how it finds
what changed. The commit (kvol.committing) and the reload (kvol.reloading) are built on it;
kvol.workcopy puts them together."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kvol import fsops, gcpause, metrics, paths
from kvol.content import hash_file, same_stat
from kvol.errors import KvolError, WriteBackFailed
from kvol.index import (
    RACY_NS,
    Index,
    IndexEntry,
    Signature,
    SigTuple,
    delta_path,
    packed_sig,
    sig_tuple,
    unpack_sig,
)
from kvol.index_columns import INTS
from kvol.model import FileRecord
from kvol.repo import Repo, this_writer

if TYPE_CHECKING:
    from kvol.tracker import ChangeTracker

log = logging.getLogger(__name__)

#: Directories are opened this way to scan them: never through a symlink.
SCAN_DIR_FLAGS = fsops.DIR_FLAGS
CONFIG_FILE = "config.json"
INDEX_FILE = "index"
LOCK_FILE = "lock"
#: What a reload in progress is doing (see WorkingCopy._recover).
JOURNAL_FILE = "reload-journal"
#: Each file a reload is about to move into place, with its staged name: a file that was
#: moved (its staged copy is gone) and then deleted before the reload was settled is a
#: local deletion, not a file the reload never wrote.
LANDING_FILE = "reload-landing"
#: Each file a reload is about to remove because the volume deleted it: at settling, a
#: file the journal names as there when the reload began that is gone but not listed here
#: was deleted locally (a change to commit), not by the reload.
REMOVAL_FILE = "reload-removals"
#: What a commit in progress is publishing (see WorkingCopy._recover_commit).
COMMIT_JOURNAL_FILE = "commit-journal"
#: Present while a create is filling the copy (removed when the copy is complete).
CREATING_FILE = "creating"
#: Parallel reads and uploads during a commit, and downloads during a reload.
DEFAULT_CONCURRENCY = 8
#: What a sync reports when the disk lost data it was to write back.
_WRITE_BACK_ERRNOS = frozenset({errno.EIO, errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class CommitResult:
    #: The seq the commit landed at; None when there was nothing to publish.
    seq: int | None
    files: int = 0
    deleted: int = 0
    bytes: int = 0
    sent_bytes: int = 0
    #: Files that changed while being read: left for the next commit.
    deferred: tuple[str, ...] = ()
    #: Paths not committed because they are not regular files (FIFOs, sockets, devices,
    #: symlinks), found so by the scan or when opened to be read.
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReloadResult:
    from_seq: int
    to_seq: int
    files: int = 0
    #: Paths where a local uncommitted change was kept over a newer commit.
    kept_local: tuple[str, ...] = ()


@dataclass(frozen=True)
class Status:
    volume_id: str
    base_seq: int
    changed: tuple[str, ...]
    deleted: tuple[str, ...]
    uncommitted_bytes: int


#: What a scan found of a file: its stat, or its signature packed (see index.packed_sig),
#: which the plain scan keeps: a whole stat is ten times its size, and a first commit
#: finds every file of the copy.
Found = os.stat_result | bytes


def found_key(found: Found) -> SigTuple:
    return unpack_sig(found) if isinstance(found, bytes) else sig_tuple(found)


@dataclass
class ScanResult:
    #: New or possibly modified files, with their stat.
    candidates: dict[str, Found] = field(default_factory=dict)
    #: Files the index knows that are gone.
    deleted: set[str] = field(default_factory=set)
    dirs_added: set[str] = field(default_factory=set)
    dirs_removed: set[str] = field(default_factory=set)
    #: Paths that are not regular files or directories: never committed.
    skipped: set[str] = field(default_factory=set)
    #: Regular files with more than one link (found by a full scan of a plain copy).
    linked: list[str] = field(default_factory=list)


class CopyBase:
    """The state a working copy's commit and reload share, and the checks both make."""

    def __init__(
        self,
        repo: Repo,
        root: Path,
        meta_dir: Path,
        index: Index,
        *,
        read_only: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.repo = repo
        self.root = root
        self.meta_dir = meta_dir
        self.index = index
        self.read_only = read_only
        self.concurrency = concurrency
        #: Match busy processes by this device (set by layouts that mount the copy).
        self.busy_device: int | None = None
        self._thread_lock = threading.RLock()
        self._autocommit: threading.Thread | None = None
        self._stop = threading.Event()
        #: Finds changes from inotify events while this process holds the copy open.
        self._tracker: ChangeTracker | None = None
        self._closed = False
        self._uncommitted = 0
        #: Highest seq this process knows is taken; later commits probe after it.
        self._known_head = 0
        self._index_sig = _file_sig(meta_dir / INDEX_FILE)
        #: Who this copy's entries name: its own id, so that a commit settled from its
        #: journal is told from another copy's identical one (even in this process).
        self.writer = replace(this_writer(), id=secrets.token_hex(8))
        #: The last error of the background autocommit, cleared by the next success.
        self.autocommit_error: KvolError | None = None
        if not read_only:
            metrics.WRITERS.inc()

    # -- locking --------------------------------------------------------------------

    def _settle_stopped_reload(self) -> None:
        """Settle a reload that was killed midway as soon as the copy is opened again (a
        restarted node plugin opens its copies first), not only at the next commit or
        reload: a directory made here in between would otherwise pass for one the reload
        made, and its maker's change would never be committed. Left alone while another
        process holds the lock: that process settles it."""
        if not os.path.lexists(self.meta_dir / JOURNAL_FILE):
            return
        with self._lock_file(wait=False) as held:
            if held:
                self._refresh_index()
                if os.path.lexists(self.meta_dir / JOURNAL_FILE):
                    self._recover()

    @contextlib.contextmanager
    def _lock_file(self, *, wait: bool = True) -> Iterator[bool]:
        """The copy's lock across threads and processes; yields whether it is held
        (``wait=False``: not if another process holds it)."""
        with self._thread_lock:
            fd = os.open(self.meta_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
                yield True
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def _locked(self, *, settle: bool = True) -> Iterator[None]:
        """One commit or reload at a time, across threads and processes.

        ``settle=False`` (only looking): a commit journal that cannot be settled now
        (the store is unreachable) is left for the next commit instead of failing."""
        with self._lock_file():
            # Another process may have committed or reloaded while we waited.
            self._refresh_index()
            # A journal left under a free lock is a commit or reload that died: settle
            # it first.
            if os.path.lexists(self.meta_dir / COMMIT_JOURNAL_FILE):
                try:
                    self._recover_commit()
                except KvolError as exc:
                    if settle:
                        raise
                    log.warning("an unfinished commit of %s is not settled yet: %s", self.root, exc)
            if os.path.lexists(self.meta_dir / JOURNAL_FILE):
                self._recover()
            yield

    def _sync_tree(self) -> None:
        """Make the tree durable before the index records it: after a power loss, a file
        the index calls clean must hold what it says (an empty or short one would read as
        a change, and the next commit would publish it over the volume's), and a file a
        reload or a commit saw removed must stay removed."""
        with self._write_back_errors():
            fsops.sync_filesystem(self.root)

    def _sync_changed(self, changed: Collection[str]) -> None:
        """Make the tree durable at ``changed`` (and the directories holding them) before
        the index records them, as _sync_tree does for all of it."""
        with self._write_back_errors():
            fsops.sync_changed(self.root, changed)

    @contextlib.contextmanager
    def _write_back_errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            if exc.errno not in _WRITE_BACK_ERRNOS:
                raise
            raise WriteBackFailed(
                f"{self.root}: the disk could not write the working copy's files back "
                f"({os.strerror(exc.errno)}); nothing that names them was recorded or "
                "published",
                exc.errno,
            ) from exc

    def _save_index(self) -> None:
        path = self.meta_dir / INDEX_FILE
        self.index.save(path)
        self._index_sig = _file_sig(path)

    def _load_saved_index(self) -> Index:
        """The index as saved (a stopped commit or reload changed the one in memory)."""
        path = self.meta_dir / INDEX_FILE
        self.index = Index.load(path)
        self._index_sig = _file_sig(path)
        return self.index

    def _refresh_index(self) -> None:
        path = self.meta_dir / INDEX_FILE
        sig = _file_sig(path)
        if sig is not None and sig != self._index_sig:
            self.index = Index.load(path)
            self._index_sig = sig

    def _recover_commit(self) -> None:
        """Settle a commit that stopped midway, from its journal (kvol.commit_journal)."""
        raise NotImplementedError

    def _recover(self) -> None:
        """Settle a reload that stopped midway, from its journal (kvol.reload_journal)."""
        raise NotImplementedError

    def _drop_journal(self, name: str = JOURNAL_FILE) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.meta_dir / name)
        if name == JOURNAL_FILE:
            self._drop_reload_records()

    def _drop_reload_records(self) -> None:
        """Remove a reload's notes of what it landed and removed (LANDING_FILE, REMOVAL_FILE)."""
        for leftover in (LANDING_FILE, REMOVAL_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.meta_dir / leftover)

    # -- finding changes ------------------------------------------------------------

    def _scan(self) -> ScanResult:
        """What changed: from the change tracker while one runs (see kvol.tracker), else
        by a full scan. Code that changes the index in place outside a commit must call
        ``_forget_tracked_changes`` first: the tracker only follows the tree."""
        tracker = self._tracker
        if tracker is not None:
            return tracker.scan(self.index, self._scan_everything)
        return self._scan_everything()

    def _scan_everything(self) -> ScanResult:
        """Compare the whole tree with the index by stat.

        This is every commit's floor (one lstat per file), so the loop is lean: directories
        are recognized from readdir's type without a stat, files are stat'ed relative to
        their directory's descriptor (no path walk in the kernel), and the cyclic GC is
        paused while the walk allocates a few objects per file.
        """
        result = ScanResult()
        candidates = result.candidates
        seen_dirs: set[str] = set()
        # Most files are still rows of the loaded index: their signature is compared in
        # its column, without making an entry of each (see Index.stat_rows).
        files, sig_column = self.index.stat_rows()
        width = INTS
        seen: list[str] = []  # files of the index found in the tree
        temp_prefix = fsops.TEMP_PREFIX
        is_reg = stat.S_ISREG
        with gcpause.paused():
            stack = [""]
            root = str(self.root)
            while stack:
                prefix = stack.pop()
                try:
                    dir_fd = os.open(os.path.join(root, prefix), SCAN_DIR_FLAGS)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # removed (or replaced) while scanning
                except OSError as exc:
                    if exc.errno != errno.ELOOP:
                        raise
                    continue  # replaced by a symlink while scanning
                try:
                    with os.scandir(dir_fd) as entries:
                        for entry in entries:
                            name = entry.name
                            if name.startswith(temp_prefix) or (
                                not prefix and name == paths.RESERVED
                            ):
                                continue
                            rel = prefix + name
                            if entry.is_dir(follow_symlinks=False):
                                seen_dirs.add(rel)
                                stack.append(rel + "/")
                                continue
                            try:
                                st = entry.stat(follow_symlinks=False)
                            except FileNotFoundError:
                                continue
                            if not is_reg(st.st_mode):
                                result.skipped.add(rel)
                                continue
                            if st.st_nlink > 1:
                                result.linked.append(rel)
                            known = files.get(rel)
                            if known is None:
                                candidates[rel] = packed_sig(st)
                                continue
                            seen.append(rel)
                            if isinstance(known, IndexEntry):
                                if known.racy or known.stat_key != (
                                    st.st_size,
                                    st.st_mtime_ns,
                                    st.st_ino,
                                    st.st_ctime_ns,
                                    st.st_mode & 0o7777,
                                ):  # as IndexEntry.is_clean, inline: this runs per file
                                    candidates[rel] = packed_sig(st)
                                continue
                            at = known * width
                            if (
                                sig_column[at + 1] != st.st_size
                                or sig_column[at + 2] != st.st_mtime_ns
                                or sig_column[at + 3] != st.st_ino
                                or sig_column[at + 4] != st.st_ctime_ns
                                or sig_column[at + 5] != st.st_mode & 0o7777
                            ):
                                candidates[rel] = packed_sig(st)
                finally:
                    os.close(dir_fd)
        if len(seen) < len(files):
            result.deleted = files.keys() - set(seen)
        result.dirs_added = seen_dirs - self.index.dirs
        result.dirs_removed = self.index.dirs - seen_dirs
        return result

    def _forget_tracked_changes(self) -> None:
        """The index is about to change in place outside a commit: scan everything next."""
        if self._tracker is not None:
            self._tracker.request_full_scan("the index changed outside a commit")

    def _set_uncommitted(self, value: int) -> None:
        metrics.UNCOMMITTED_BYTES.inc(value - self._uncommitted)
        self._uncommitted = value

    # -- what a file holds ----------------------------------------------------------

    def _view_mode(self, mode: int) -> int:
        """The permission bits a file the volume has with ``mode`` gets in this copy."""
        return fsops.safe_mode(mode)

    def _committed_mode(self, st_mode: int, record: FileRecord | None) -> int:
        """The mode a commit records for a file with ``st_mode`` that the volume had as
        ``record``: one still showing the view of the record's mode keeps the record's."""
        mode = fsops.safe_mode(st_mode)
        if record is not None and mode == self._view_mode(record.mode):
            return fsops.safe_mode(record.mode)
        return mode

    def _shows_mode(self, st_mode: int, record: FileRecord) -> bool:
        """Would a commit record ``record``'s mode for a file with ``st_mode``? (A mount
        group's view shows a committed 0644 as 0664, but a file the pod made 0644 itself
        and committed is as clean as one showing the view.)"""
        return self._committed_mode(st_mode, record) == fsops.safe_mode(record.mode)

    def _holds(self, root_fd: int, rel: str, record: FileRecord) -> os.stat_result | None:
        """The stat of the file at ``rel`` if it holds exactly ``record``'s content and mode,
        unchanged while it was read; else None."""
        try:
            fd = fsops.open_file(root_fd, rel)
        except OSError:
            return None
        try:
            before = os.fstat(fd)
            if before.st_size != record.size or not self._shows_mode(before.st_mode, record):
                return None
            digest = hash_file(fd, before.st_size, self.repo.meta.chunk_size)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        return before if digest == record.hash and same_stat(before, after) else None

    def _is_clean(self, root_fd: int, rel: str, entry: IndexEntry, st: os.stat_result) -> bool:
        """Does the local file still hold what the index says?

        The stat decides when it matches and is not racy. Otherwise a file of the recorded
        size and mode is hashed: one rewritten with its own bytes is unchanged, as a commit
        sees it ("touched, not changed"), so a reload must not keep it as a local change
        over another writer's newer commit. Only files this copy had count (``sig``): one
        it never had is a new write even if its bytes happen to match.
        """
        record = entry.record
        if not stat.S_ISREG(st.st_mode) or record is None or entry.sig is None:
            return False
        if entry.is_clean(st):
            return True
        if st.st_size != record.size or not self._shows_mode(st.st_mode, record):
            return False
        fd = fsops.open_file(root_fd, rel)
        try:
            same = hash_file(fd, st.st_size, self.repo.meta.chunk_size) == record.hash
        finally:
            os.close(fd)
        if same:
            # A file changed again within the clock's granularity would keep this stat.
            entry.sig, entry.racy = Signature.of(st), st.st_mtime_ns >= time.time_ns() - RACY_NS
        return same


_Stat = tuple[int, int, int, bytes]


def _file_sig(path: Path) -> tuple[_Stat, _Stat | None] | None:
    """What tells the index saved at ``path`` and its delta from any other save of them
    (None: no index)."""
    index = _stat_of(path)
    return None if index is None else (index, _stat_of(delta_path(path)))


def _stat_of(path: Path) -> _Stat | None:
    """The file's stat and its first line, which names the digest of what follows: a
    save within the clock's granularity that reused a freed inode and kept the size
    would keep the stat alone, and another process's save would go unseen."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        return (st.st_ino, st.st_mtime_ns, st.st_size, os.pread(fd, _HEAD_BYTES, 0))
    finally:
        os.close(fd)


#: A base's or a delta's first line: its kind, its format and its digest (80 bytes).
_HEAD_BYTES = 128


def under_any(path: str, dirs: set[str]) -> bool:
    return any(a in dirs for a in paths.ancestors(path))
