"""Working copies: a plain directory plus an index, based on one commit of a volume.

Programs read and write the directory at disk speed. ``commit()`` publishes what changed
since the copy last matched the volume (found by stat, so untouched files are never read);
``reload()`` applies newer commits and keeps local changes that are not committed yet,
because they will be the last write. See DESIGN: Working copies.

Subclasses may change how changes are found (``_scan``): the copy-on-write layout of the
CSI plugin only walks its upper layer.

Rules that keep every change:

- A deletion names what this copy saw: removing a directory tree publishes an unlink of
  each file under it that the copy had at its base and an rmdir of each explicit
  directory, deepest first, so files other writers added there meanwhile survive. A
  file of the volume this copy never had (kept out by a local file in its way) is never
  deleted by it: only replaced, when this copy publishes something at that path.
- A reload never removes or overwrites a path that is not clean. Where this copy has an
  uncommitted file (or other non-directory) and a newer commit has a directory, commit
  order decides and no uncommitted change is discarded: the local file stays, the files
  of the volume under that directory are not written here (``status`` lists them as
  deleted, since this copy does not have them) and they stay in the volume until this
  copy's next commit, the later write, publishes its file at that path. The other way
  round (a local directory, a newer file) the local directory stays the same way.
- A reload journals the paths it will touch, with the content each will hold, before it
  touches any; one that dies midway is settled from the journal by the next command, so
  the files it wrote are recorded as clean and never published back over newer commits.
- Special files (FIFOs, sockets, devices, symlinks) are never read or followed: a commit
  skips them and says so. Only permission bits of a mode are published or applied.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import itertools
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from kvol import fsops, metrics, paths
from kvol.busy import find_holders
from kvol.content import (
    PACK_THRESHOLD,
    ContentWriter,
    SmallReader,
    Uploaded,
    hash_file,
    same_stat,
)
from kvol.errors import (
    CorruptData,
    HistoryPruned,
    InvalidArgument,
    KvolError,
    LimitExceeded,
    NotFound,
    ReadOnly,
    StaleBase,
    VolumeBusy,
)
from kvol.index import (
    RACY_NS,
    Index,
    IndexEntry,
    Signature,
    SigTuple,
    as_stat_key,
    packed_sig,
    record_size,
    sig_tuple,
    unpack_sig,
)
from kvol.model import (
    Entry,
    FileRecord,
    Limits,
    MkdirOp,
    Op,
    PutOp,
    RmdirOp,
    State,
    UnlinkOp,
    Writer,
)
from kvol.repo import Repo, this_writer
from kvol.store import Store, open_store

if TYPE_CHECKING:
    from kvol.tracker import ChangeTracker

log = logging.getLogger(__name__)

#: Directories are opened this way to scan them: never through a symlink.
_SCAN_DIR_FLAGS = fsops.DIR_FLAGS

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
#: Small files read and packed by one task of a commit.
SMALL_BATCH = 256
#: Files whose part of a commit journal is encoded at a time.
JOURNAL_SLICE = 1024
#: A commit of this many changed files gives the memory its phases freed back to the
#: system between them (see _release_freed_memory).
_LARGE_COMMIT_FILES = 10_000


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


def _found_key(found: Found) -> SigTuple:
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


class WorkingCopy:
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

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        repo: Repo,
        root: str | os.PathLike[str],
        meta_dir: str | os.PathLike[str] | None = None,
        *,
        read_only: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> WorkingCopy:
        """Make a new working copy of the volume's head in ``root`` (empty or missing).

        All or nothing: if it fails, what it made is removed again, and a copy whose
        creation was killed (marked by a creation marker, with no configuration yet) is
        cleared and made again by the next create. The configuration, which makes the
        directory a working copy, is written last.
        """
        root_path = Path(root).absolute()
        meta_path = Path(meta_dir).absolute() if meta_dir else root_path / paths.RESERVED
        made_root = not root_path.exists()
        root_path.mkdir(parents=True, exist_ok=True)
        leftovers = [p.name for p in root_path.iterdir() if p != meta_path]
        configured = (meta_path / CONFIG_FILE).exists()
        unfinished = not configured and (meta_path / CREATING_FILE).exists()
        if leftovers and not unfinished:
            raise InvalidArgument(
                f"{root_path} is not empty: a working copy needs an empty directory"
            )
        if configured:
            raise InvalidArgument(f"{root_path} is a working copy already")
        repo.meta  # noqa: B018 - fail early, before anything is written, if the volume is gone
        made_meta = not meta_path.exists()
        if unfinished:
            # A create that was killed: everything here is what it downloaded.
            _clear(root_path, keep=meta_path)
        meta_path.mkdir(parents=True, exist_ok=True)
        fsops.write_atomically(meta_path / CREATING_FILE, b"")
        try:
            wc = cls._build(repo, root_path, meta_path, read_only, concurrency)
        except BaseException:
            _clear(root_path, keep=meta_path)
            for name in (
                CONFIG_FILE,
                INDEX_FILE,
                LOCK_FILE,
                JOURNAL_FILE,
                LANDING_FILE,
                REMOVAL_FILE,
                COMMIT_JOURNAL_FILE,
                CREATING_FILE,
            ):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(meta_path / name)
            if made_meta:
                with contextlib.suppress(OSError):
                    meta_path.rmdir()
            if made_root:
                with contextlib.suppress(OSError):
                    root_path.rmdir()
            raise
        os.unlink(meta_path / CREATING_FILE)
        return wc

    @classmethod
    def _build(
        cls,
        repo: Repo,
        root_path: Path,
        meta_path: Path,
        read_only: bool,
        concurrency: int,
    ) -> WorkingCopy:
        config = {
            "format": 1,
            "store": repo.store.url,
            "volume_id": repo.volume_id,
            "read_only": read_only,
        }
        wc = cls(
            repo,
            root_path,
            meta_path,
            Index(repo.volume_id),
            read_only=read_only,
            concurrency=concurrency,
        )
        try:
            with wc._locked():
                state = repo.state()
                touched = set(state.files) | state.all_dirs()
                wc._apply(state, touched)
                wc.index.base = state.seq
                wc._save_index()
                # Its records of what landed are done with: a later reload stopped midway
                # must never take them for its own (see _landed_then_removed).
                wc._drop_journal()
        except BaseException:
            wc.close(final_commit=False)  # no copy was made: not a writer
            raise
        fsops.write_atomically(
            meta_path / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode()
        )
        return wc

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        meta_dir: str | os.PathLike[str] | None = None,
        *,
        store: Store | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> WorkingCopy:
        """Open an existing working copy (after a restart, or from another process)."""
        root_path = Path(root).absolute()
        meta_path = Path(meta_dir).absolute() if meta_dir else root_path / paths.RESERVED
        try:
            config = json.loads((meta_path / CONFIG_FILE).read_text())
            volume_id = str(config["volume_id"])
            store_url = str(config["store"])
            read_only = bool(config.get("read_only", False))
        except FileNotFoundError as exc:
            raise NotFound(
                f"{root_path} is not a kvol working copy (no {paths.RESERVED}/{CONFIG_FILE})"
            ) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptData(f"working copy configuration in {meta_path} is unreadable") from exc
        store = store or open_store(store_url)
        index = Index.load(meta_path / INDEX_FILE)
        if index.volume_id != volume_id:
            raise CorruptData(f"working copy index in {meta_path} belongs to another volume")
        copy = cls(
            Repo(store, volume_id),
            root_path,
            meta_path,
            index,
            read_only=read_only,
            concurrency=concurrency,
        )
        copy._settle_stopped_reload()
        return copy

    # -- locking ----------------------------------------------------------------------------

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

    def _save_index(self) -> None:
        path = self.meta_dir / INDEX_FILE
        self.index.save(path)
        self._index_sig = _file_sig(path)

    def _refresh_index(self) -> None:
        path = self.meta_dir / INDEX_FILE
        sig = _file_sig(path)
        if sig is not None and sig != self._index_sig:
            self.index = Index.load(path)
            self._index_sig = sig

    # -- finding changes --------------------------------------------------------------------

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
        files = self.index.files
        seen: list[str] = []  # files of the index found in the tree
        temp_prefix = fsops.TEMP_PREFIX
        is_reg = stat.S_ISREG
        collecting = gc.isenabled()
        gc.disable()
        try:
            stack = [""]
            root = str(self.root)
            while stack:
                prefix = stack.pop()
                try:
                    dir_fd = os.open(os.path.join(root, prefix), _SCAN_DIR_FLAGS)
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
                            if known.racy or known.stat_key != (
                                st.st_size,
                                st.st_mtime_ns,
                                st.st_ino,
                                st.st_ctime_ns,
                                st.st_mode & 0o7777,
                            ):  # as IndexEntry.is_clean, inline: this runs per file
                                candidates[rel] = packed_sig(st)
                finally:
                    os.close(dir_fd)
        finally:
            if collecting:
                gc.enable()
        if len(seen) < len(files):
            result.deleted = files.keys() - set(seen)
        result.dirs_added = seen_dirs - self.index.dirs
        result.dirs_removed = self.index.dirs - seen_dirs
        return result

    # -- commit -----------------------------------------------------------------------------

    def commit(self, message: str | None = None) -> CommitResult:
        """Publish every change since the copy last matched the volume."""
        if self.read_only:
            raise ReadOnly("this working copy is read-only")
        started = time.perf_counter()
        try:
            with self._locked():
                result = self._commit_locked(message)
        except Exception:
            metrics.COMMITS.labels("failed").inc()
            raise
        if result.seq is None:
            metrics.COMMITS.labels("empty").inc()
        else:
            metrics.COMMITS.labels("published").inc()
            metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
            metrics.COMMITTED_BYTES.inc(result.bytes)
            metrics.COMMITTED_FILES.inc(result.files + result.deleted)
        self._set_uncommitted(0 if not result.deferred else self._uncommitted)
        return result

    def _commit_locked(self, message: str | None) -> CommitResult:
        scan_started_ns = time.time_ns()
        scan = self._scan()
        # What this commit is about to publish is uncommitted until it lands: a failing
        # commit leaves it counted, so data piling up in the copy shows.
        self._set_uncommitted(sum(_found_key(f)[0] for f in scan.candidates.values()))
        index = self.index
        removed_dirs = _outermost(scan.dirs_removed)
        # A deletion names what this copy saw at its base: every file of a removed tree the
        # index has a record of, then its explicit directories, deepest first. A file
        # another writer added under such a directory meanwhile is not named and survives
        # (and keeps its directory). Files this copy never published need no deletion.
        gone = set(scan.deleted)
        gone_dirs: set[str] = set()
        if removed_dirs:
            gone.update(p for p in index.files if _under_any(p, removed_dirs))
            gone_dirs = {
                d for d in index.explicit_dirs if d in removed_dirs or _under_any(d, removed_dirs)
            }
        # Files of the volume this copy never had (kept out by a local file in the way of
        # their directory, or by something not regular at their path): not this copy's
        # to delete. A file or directory this commit publishes in their place replaces
        # them; the others stay on record, to be written here by a later reload.
        never_had = {
            p for p in gone if index.files[p].stat_key is None and index.files[p].has_record
        }
        # Nor is a directory of theirs that only looked removed here (a local file stood
        # where it goes): it holds files this copy never had.
        gone_dirs -= {a for p in never_had for a in paths.ancestors(p)}
        file_deletes = sorted(p for p in gone - never_had if index.files[p].has_record)
        rmdirs = sorted(gone_dirs, reverse=True)  # a directory after everything under it
        ops: list[Op] = [UnlinkOp(p) for p in file_deletes]
        ops += [RmdirOp(d) for d in rmdirs]
        # A directory here that the volume has only through files this copy never had:
        # the copy made it as far as it saw the volume, so it is published as made.
        made = scan.dirs_added | self._implied_only_by_hidden(scan, never_had)
        ops += [MkdirOp(d) for d in sorted(made)]

        large = len(scan.candidates) >= _LARGE_COMMIT_FILES
        uploads, stats, unreadable = self._upload(scan.candidates)
        if large:
            _release_freed_memory()  # the upload's buffers, before records take their place
        skipped = sorted(scan.skipped | unreadable)
        if skipped:
            shown = ", ".join(skipped[:5]) + (
                f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            )
            log.warning("not committed from %s (not regular files): %s", self.root, shown)

        def racy(sig: SigTuple) -> bool:
            return sig[1] >= scan_started_ns - RACY_NS

        puts: dict[str, _Put] = {}
        refreshed: dict[str, SigTuple] = {}
        deferred: list[str] = []
        sent_bytes = sum(u.sent_bytes for u in uploads.values())
        modes: dict[int, int] = {}  # one int per distinct mode, not one per file
        # Each upload and stat goes once its record is made: at 100,000 files they are
        # tens of MiB, which the journal and the log entry would otherwise come on top of.
        for rel in sorted(uploads):
            up, packed = uploads.pop(rel), stats.pop(rel)
            if not up.stable:
                deferred.append(rel)
                continue
            sig = unpack_sig(packed)
            # Only permission bits are published: set-id and sticky bits are never applied
            # by a copy (see fsops.safe_mode), so they are not recorded either.
            entry = index.files.get(rel)
            mode = self._committed_mode(sig[4], entry.record if entry is not None else None)
            mode = modes.setdefault(mode, mode)
            if (
                entry is not None
                and entry.record is not None
                and entry.sig is not None  # a file this copy never had is a new write
                and entry.record.hash == up.hash
                and fsops.safe_mode(entry.record.mode) == mode
            ):
                refreshed[rel] = sig  # touched, not changed: nothing to publish
                continue
            record = FileRecord(up.size, sig[1], mode, up.hash, up.parts)
            puts[rel] = (record, packed, racy(sig))
            ops.append(PutOp(rel, record))
        del uploads, stats  # emptied, but their tables stay until they go

        # A directory only its files implied, kept here while this commit removes its last
        # file, is published as a directory: else it would leave the volume with the file.
        kept_dirs = [
            d
            for d in self._dirs_left_empty(scan, file_deletes, gone_dirs, puts, never_had)
            if d not in made
        ]
        ops += [MkdirOp(d) for d in kept_dirs]

        for rel, sig in refreshed.items():
            entry = index.files[rel]
            entry.stat_key, entry.racy = sig, racy(sig)
        gone -= {
            p
            for p in never_had
            if p not in scan.dirs_added and not any(a in puts for a in paths.ancestors(p))
        }
        if not ops:
            # Entries of files never published that are gone locally need no deletion.
            forgotten = gone.difference(file_deletes)
            for p in forgotten:
                del index.files[p]
            if refreshed or forgotten:
                self._save_index()
            return CommitResult(None, deferred=tuple(deferred), skipped=tuple(skipped))

        self._check_limits(removed_dirs, file_deletes, puts, made)
        done = _Published(
            gone=sorted(gone),
            removed_dirs=sorted(removed_dirs),
            dirs_added=sorted(made.union(kept_dirs)),
            puts=puts,
        )
        # Written (and synced) before publishing: a commit that dies after its entry
        # landed but before the index records it is settled from this at the next lock
        # (see _recover_commit); else its files would look changed and be published
        # again, over whatever other writers committed meanwhile.
        self._write_commit_journal(ops, index.base, self._known_head, done)
        if large:
            _release_freed_memory()
        seq = self.repo.publish(
            ops, index.base, message, known_head=self._known_head, writer=self.writer
        )
        self._known_head = seq
        result = CommitResult(
            seq,
            files=len(puts),
            deleted=len(file_deletes) + len(rmdirs),
            bytes=sum(r.size for r, _, _ in puts.values()),
            sent_bytes=sent_bytes,
            deferred=tuple(deferred),
            skipped=tuple(skipped),
        )
        del ops  # the index holds the records from here on
        if large:
            _release_freed_memory()  # the log entry's encoding, before the index grows
        self._record_published(seq, done)
        done.puts.clear()
        self._save_index()
        self._drop_journal(COMMIT_JOURNAL_FILE)
        return result

    def _dirs_left_empty(
        self,
        scan: ScanResult,
        file_deletes: list[str],
        gone_dirs: set[str],
        puts: dict[str, _Put],
        never_had: set[str],
    ) -> list[str]:
        """Directories still here that only files implied in the volume, and that no file
        or explicit directory of the volume keeps once this commit's deletions apply (the
        files this copy never had do not count: it cannot see them keep anything)."""
        index = self.index
        here = (index.dirs - scan.dirs_removed) | scan.dirs_added
        candidates = {
            a
            for p in [*file_deletes, *gone_dirs]
            for a in paths.ancestors(p)
            if a in here and a not in index.explicit_dirs and a not in scan.dirs_added
        }
        if not candidates:
            return []
        deleted = set(file_deletes) | never_had
        kept = [p for p, e in index.files.items() if e.has_record and p not in deleted]
        kept += list(puts)
        kept += [d for d in index.explicit_dirs | scan.dirs_added if d not in gone_dirs]
        filled = {a for p in kept for a in paths.ancestors(p)}
        return sorted(candidates - filled)

    def _implied_only_by_hidden(self, scan: ScanResult, never_had: set[str]) -> set[str]:
        """Directories here, known to the volume, that only files this copy never had
        imply (a local directory or file stands where they go): they were not the volume's
        as this copy saw it, so it made them."""
        if not never_had:
            return set()
        index = self.index
        candidates = {
            a
            for p in never_had
            for a in paths.ancestors(p)
            if a in index.dirs and a not in scan.dirs_removed and a not in index.explicit_dirs
        }
        if not candidates:
            return set()
        implied = {a for d in index.explicit_dirs for a in paths.ancestors(d)}
        implied.update(
            a
            for p, e in index.files.items()
            if e.has_record and p not in never_had
            for a in paths.ancestors(p)
        )
        return candidates - implied

    def _record_published(self, seq: int, done: _Published) -> None:
        """Bring the index up to a commit of this copy that landed at ``seq``; applying
        it twice changes nothing."""
        index = self.index
        if seq == index.base + 1:
            # Nobody published in between: the copy now matches the volume at seq, and
            # the next commit need not probe the log positions this one took.
            index.base = seq
        elif seq > index.base:
            index.ahead = max(index.ahead, seq)
        for p in done.gone:
            index.files.pop(p, None)
        for d in done.removed_dirs:
            index.dirs = {x for x in index.dirs if not paths.is_under(x, d)}
            index.explicit_dirs = {x for x in index.explicit_dirs if not paths.is_under(x, d)}
        index.dirs.update(done.dirs_added)
        index.explicit_dirs.update(done.dirs_added)
        if done.puts:
            # A file put where the volume has a directory replaces that directory and
            # everything under it (one this copy kept a local file over: not on disk here,
            # but still on record as the volume's until now).
            known = index.dirs | index.explicit_dirs
            known.update(a for d in index.explicit_dirs for a in paths.ancestors(d))
            for rel in [rel for rel in done.puts if rel in known]:
                index.dirs = {x for x in index.dirs if not paths.is_under(x, rel)}
                index.explicit_dirs = {x for x in index.explicit_dirs if not paths.is_under(x, rel)}
        for rel, (record, sig, racy) in done.puts.items():
            index.files[rel] = IndexEntry(record, _sharing(as_stat_key(sig), record), racy)
            index.dirs.update(paths.ancestors(rel))

    def _write_commit_journal(
        self, ops: list[Op], base: int, known_head: int, done: _Published
    ) -> None:
        head = {
            "format": 1,
            "base": base,
            "known_head": known_head,
            # Another writer may publish the very same operations (the same files
            # extracted in two copies): only an entry of this writer is this commit.
            "writer": self.writer.id,
        }

        def dumps(value: Any) -> str:
            return json.dumps(value, separators=(",", ":"))

        def pieces() -> Iterator[bytes]:
            # The JSON of one object holding head, ops, gone, removed_dirs, dirs_added and
            # puts, made a slice of files at a time: at 100,000 files the whole (and its
            # lists) would be hundreds of MiB, and its bytes are only ever read back.
            yield dumps(head)[:-1].encode()
            yield b',"ops":['
            for i in range(0, len(ops), JOURNAL_SLICE):
                # As an entry stores them (no JSON round trip: a copy of every record).
                some = Entry(tuple(ops[i : i + JOURNAL_SLICE]), 0.0, Writer("", "", 0), 0)
                yield (b"," if i else b"") + dumps(some.to_payload()["ops"])[1:-1].encode()
            yield (
                f'],"gone":{dumps(done.gone)},"removed_dirs":{dumps(done.removed_dirs)},'
                f'"dirs_added":{dumps(done.dirs_added)},"puts":{{'
            ).encode()
            puts = list(done.puts.items())
            for i in range(0, len(puts), JOURNAL_SLICE):
                some_puts = {
                    rel: [record.to_list(), _sig_list(sig), racy]
                    for rel, (record, sig, racy) in puts[i : i + JOURNAL_SLICE]
                }
                yield (b"," if i else b"") + dumps(some_puts)[1:-1].encode()
            yield b"}}"

        fsops.write_atomically(self.meta_dir / COMMIT_JOURNAL_FILE, pieces())

    def _recover_commit(self) -> None:
        """Settle a commit that stopped after writing its journal (killed, or failed).

        If its entry is in the log (the same operations, after the base it was made on),
        the index records it as a finished commit would have; otherwise nothing was
        published and the next commit publishes the same changes.
        """
        path = self.meta_dir / COMMIT_JOURNAL_FILE
        try:
            journal = json.loads(path.read_bytes())
            base = int(journal["base"])
            start = max(base, int(journal["known_head"]))
            ops = journal["ops"]
            if not isinstance(ops, list):
                raise TypeError("ops is not a list")
            writer = journal.get("writer")  # absent in journals of older versions
            done = _Published(
                gone=[paths.check(str(p)) for p in journal["gone"]],
                removed_dirs=[paths.check(str(p)) for p in journal["removed_dirs"]],
                dirs_added=[paths.check(str(p)) for p in journal["dirs_added"]],
                puts={
                    paths.check(str(rel)): (
                        FileRecord.from_list(record),
                        Signature(*(int(v) for v in sig)),
                        bool(racy),
                    )
                    for rel, (record, sig, racy) in journal["puts"].items()
                },
            )
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError, AttributeError, KvolError) as exc:
            raise CorruptData(f"commit journal {path} is unreadable: {exc}") from exc
        landed = None
        # A commit that landed before the pruning horizon is out of reach: it is taken as
        # not landed, so its changes stay local changes (never lost). The horizon's own
        # entry is retained history, so the search starts right before it.
        for seq, entry in self.repo.entries_after(max(start, self.repo.horizon() - 1)):
            if (writer is None or entry.writer.id == writer) and _ops_payload(entry.ops) == ops:
                landed = seq
                break
        self.index = Index.load(self.meta_dir / INDEX_FILE)
        self._index_sig = _file_sig(self.meta_dir / INDEX_FILE)
        if landed is not None:
            self._known_head = max(self._known_head, landed)
            self._record_published(landed, done)
            self._save_index()
        self._drop_journal(COMMIT_JOURNAL_FILE)

    def _upload(
        self, candidates: dict[str, Found]
    ) -> tuple[dict[str, Uploaded], dict[str, bytes], set[str]]:
        """Read and send the candidates. Returns what was sent, the stat each file had when
        opened (as a packed signature: a whole stat is ten times its size), and the paths
        found not to be regular files (never read)."""
        unreadable: set[str] = set()
        if not candidates:
            return {}, {}, unreadable
        root_fd = fsops.open_root(str(self.root))
        stats: dict[str, bytes] = {}

        def opener(rel: str) -> Any:
            def open_it() -> tuple[IO[bytes], os.stat_result]:
                fd = fsops.open_file(root_fd, rel)
                st = os.fstat(fd)
                stats[rel] = packed_sig(st)
                return cast(IO[bytes], os.fdopen(fd, "rb", buffering=0)), st

            return open_it

        sizes = {rel: _found_key(found)[0] for rel, found in candidates.items()}
        small = sorted(rel for rel, size in sizes.items() if size <= PACK_THRESHOLD)
        large = [rel for rel, size in sizes.items() if size > PACK_THRESHOLD]
        del sizes
        # Each read takes its own stat: the scan's (tens of MiB at 100,000 files) go now,
        # before the reads fill memory with theirs.
        candidates.clear()

        def read_small(rels: list[str]) -> SmallReader:
            return lambda: self._read_small(root_fd, rels, stats)

        meta = self.repo.meta
        try:
            with ContentWriter(
                self.repo.store,
                self.repo.keys,
                meta.chunk_size,
                known=self.index.known_content(),
                concurrency=self.concurrency,
            ) as writer:
                # Large files first, so workers send them while this thread reads the
                # small ones in batches (sorted: a batch spans few directories).
                futures = {rel: writer.add(opener(rel)) for rel in large}
                batches = [
                    writer.add_small_files(read_small(small[i : i + SMALL_BATCH]))
                    for i in range(0, len(small), SMALL_BATCH)
                ]
                writer.finish()
                results: dict[str, Uploaded] = {}
                failures: dict[str, BaseException | None] = {}
                for batch in batches:
                    done = batch.result()
                    results.update(done.uploaded)
                    failures.update(done.errors)
                for rel, future in futures.items():
                    failures[rel] = future.exception()
                    if failures[rel] is None:
                        results[rel] = future.result()
                for rel, exc in failures.items():
                    if isinstance(exc, fsops.NotRegularFile):
                        unreadable.add(rel)  # replaced by a FIFO, socket or device
                        continue
                    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
                        continue  # removed or replaced since the scan: the next commit sees it
                    if exc is not None:
                        raise exc
        finally:
            os.close(root_fd)
        return results, stats, unreadable

    @staticmethod
    def _read_small(
        root_fd: int, rels: list[str], stats: dict[str, bytes]
    ) -> Iterator[tuple[str, bytes | BaseException, bool]]:
        """Read small files, each directory opened once (without symlinks) per batch."""
        dirs: dict[str, int] = {}
        try:
            for rel in rels:
                head, _, name = rel.rpartition("/")
                try:
                    dir_fd = dirs.get(head)
                    if dir_fd is None:
                        dir_fd = dirs[head] = fsops.open_dir(root_fd, head)
                    fd = fsops.open_regular_at(dir_fd, name, rel)
                except OSError as exc:
                    yield rel, exc, False
                    continue
                try:
                    before = os.fstat(fd)
                    data = fsops.read_up_to(fd, PACK_THRESHOLD + 1)
                    after = os.fstat(fd)
                finally:
                    os.close(fd)
                stats[rel] = packed_sig(before)
                # A file that grew past the pack size since the scan changed meanwhile.
                stable = same_stat(before, after) and len(data) == before.st_size
                yield rel, data, stable and len(data) <= PACK_THRESHOLD
        finally:
            for dir_fd in dirs.values():
                os.close(dir_fd)

    def _check_limits(
        self,
        removed_dirs: set[str],
        file_deletes: list[str],
        puts: dict[str, _Put],
        dirs_added: set[str],
    ) -> None:
        limits: Limits = self.repo.meta.limits
        if limits == Limits():
            return
        for rel, (record, _, _) in puts.items():
            if limits.max_file_size is not None and record.size > limits.max_file_size:
                raise LimitExceeded(
                    f"{rel} is {record.size:,} bytes, over the volume's file size limit of "
                    f"{limits.max_file_size:,}; nothing was published and your files are unchanged"
                )
        # The files the volume would hold: this runs at every commit and looks at every
        # file, so records are read without being parsed, and only for what is checked.
        files = self.index.files
        gone = set(file_deletes)
        under_removed = tuple(d + "/" for d in removed_dirs)
        if removed_dirs:
            gone.update(p for p in files if p in removed_dirs or p.startswith(under_removed))
        kept = [p for p, e in files.items() if e.has_record and p not in gone and p not in puts]
        count = len(kept) + len(puts)
        if limits.max_files is not None and count > limits.max_files:
            raise LimitExceeded(
                f"the volume would hold {count:,} files, over its limit of {limits.max_files:,}; "
                "nothing was published and your files are unchanged"
            )
        if limits.max_bytes is not None:
            total = sum(record_size(files[p]) for p in kept)
            total += sum(r.size for r, _, _ in puts.values())
            if total > limits.max_bytes:
                raise LimitExceeded(
                    f"the volume would hold {total:,} bytes, over its limit of {limits.max_bytes:,}; "
                    "nothing was published and your files are unchanged"
                )
        if limits.max_files_per_directory is not None:
            # The directories as this commit leaves them: removed trees gone, new ones in,
            # and every one a file or directory implies.
            dirs = {
                d
                for d in self.index.dirs
                if d not in removed_dirs and not d.startswith(under_removed)
            }
            dirs |= dirs_added
            kept += puts
            counts = Counter(p.rpartition("/")[0] for p in kept)
            implied = set(counts) | {a for d in dirs for a in paths.ancestors(d)}
            for d in list(implied):
                implied.update(paths.ancestors(d))
            implied.discard("")
            for d in dirs | implied:
                counts[d.rpartition("/")[0]] += 1
            for directory, count in counts.items():
                if count > limits.max_files_per_directory:
                    raise LimitExceeded(
                        f"directory {directory or '/'} would hold {count:,} entries, over the volume's "
                        f"limit of {limits.max_files_per_directory:,} per directory; nothing was published"
                    )

    # -- reload -----------------------------------------------------------------------------

    def reload(self) -> ReloadResult:
        """Apply commits newer than the base. Refused with VolumeBusy while files are held."""
        started = time.perf_counter()
        try:
            with self._locked():
                result = self._reload_locked()
        except VolumeBusy:
            metrics.RELOADS.labels("busy").inc()
            raise
        except Exception:
            metrics.RELOADS.labels("failed").inc()
            raise
        metrics.RELOADS.labels("current" if result.from_seq == result.to_seq else "applied").inc()
        metrics.RELOAD_SECONDS.observe(time.perf_counter() - started)
        return result

    def _reload_locked(self) -> ReloadResult:
        base = self.index.base
        first = self.repo.read_entry(base + 1)
        # Files and directories of the volume a local file kept out before: written now if
        # they can be.
        touched = {
            p
            for p, e in self.index.files.items()
            if e.stat_key is None and e.has_record and not os.path.lexists(self.root / p)
        }
        touched.update(
            d
            for d in self.index.explicit_dirs - self.index.dirs
            if not os.path.lexists(self.root / d)
        )
        pruned = False
        if first is None:
            # "Already up to date" only if the store still holds what this copy has seen.
            try:
                self.repo.check_not_behind(base)
            except (StaleBase, HistoryPruned):
                # A gap right after the base (its next entry pruned) says the same.
                pruned = True  # the base was pruned: start again from the retained state
            if not touched and not pruned:
                return ReloadResult(base, base)
        holders = find_holders(str(self.root), self.busy_device)
        if holders:
            shown = ", ".join(str(h) for h in holders[:5])
            more = f" and {len(holders) - 5} more" if len(holders) > 5 else ""
            raise VolumeBusy(
                f"volume busy: close files under {self.root} before reloading (held by {shown}{more})",
                [(h.pid, h.command, h.path) for h in holders],
            )
        view = self.index.committed_state()
        if first is not None and not pruned:
            kept_out = set(touched)
            try:
                replayed = self.repo.entries_after(base + 1)
                for seq, entry in itertools.chain([(base + 1, first)], replayed):
                    if seq < self.index.ahead and any(isinstance(op, RmdirOp) for op in entry.ops):
                        # The committed state already holds this copy's later commits:
                        # whether the directory was empty then cannot be told from it.
                        pruned, touched = True, kept_out
                        break
                    view.apply(entry, seq, touched)
            except HistoryPruned:
                pruned, touched = True, kept_out  # pruned while being read
        if pruned:
            # The head's state, and every path where it differs from what the copy saw.
            view = self._retained_view(touched)
        # The index changes in place from here: only a full scan compares it with the tree.
        self._forget_tracked_changes()
        # Written (and synced) before the tree is touched: a reload that dies midway is
        # settled from it at the next lock (see _recover), so files it wrote never look
        # like local changes that a commit would publish over newer commits.
        self._write_journal(base, view, touched)
        try:
            kept, written = self._apply(view, touched)
        except BaseException:
            # Settle from what is on disk, at the old base: the next reload does the rest.
            self._recover()
            raise
        self.index.base = view.seq
        if self.index.ahead <= view.seq:
            self.index.ahead = 0
        self._save_index()
        self._drop_journal()
        return ReloadResult(base, view.seq, written, tuple(sorted(kept)))

    def _retained_view(self, touched: set[str]) -> State:
        """The head, for a copy whose base was pruned: no entries lead there from the base,
        so every path where the head differs from what the copy last saw is touched (and
        reloaded like any other, keeping local changes)."""
        seen = self.index.committed_state()
        view = self.repo.state()
        touched.update(
            p
            for p in seen.files.keys() | view.files.keys()
            if seen.files.get(p) != view.files.get(p)
        )
        touched.update(seen.all_dirs() ^ view.all_dirs())
        touched.update(seen.dirs ^ view.dirs)
        return view

    # -- the reload journal -----------------------------------------------------------------

    def _write_journal(self, base: int, view: State, touched: set[str]) -> None:
        # Records a finished reload (or a copy's creation) left are not this reload's: a
        # file they name as landed and gone since would pass for a deletion made here.
        self._drop_reload_records()
        all_dirs = view.all_dirs()
        # The directories the reload may make: those it touches, and those that hold what
        # it writes (a directory only files imply is named by no operation).
        near = touched | {a for p in touched for a in paths.ancestors(p)}
        gone = {p for p in touched if p not in view.files and p not in all_dirs}
        journal = {
            "format": 1,
            "base": base,
            "target": view.seq,
            "files": {p: view.files[p].to_list() for p in sorted(touched) if p in view.files},
            "dirs": sorted(p for p in near if p in all_dirs),
            "explicit_dirs": sorted(p for p in near if p in view.dirs),
            "gone": sorted(gone),
            # Files the reload may remove: which were there when it began (see REMOVAL_FILE).
            "gone_present": sorted(
                p for p in gone if p in self.index.files and os.path.lexists(self.root / p)
            ),
        }
        fsops.write_atomically(
            self.meta_dir / JOURNAL_FILE, json.dumps(journal, separators=(",", ":")).encode()
        )

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

    def _reload_records(self, name: str) -> list[Any]:
        """The lines of a reload's record file (LANDING_FILE, REMOVAL_FILE), parsed; the
        last line of a reload killed while appending it is skipped."""
        try:
            lines = (self.meta_dir / name).read_text().splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def _removed_by_reload(self) -> set[str]:
        """Files a stopped reload removed (or was about to: see REMOVAL_FILE)."""
        removed: set[str] = set()
        for rel in self._reload_records(REMOVAL_FILE):
            if isinstance(rel, str):
                with contextlib.suppress(KvolError):
                    removed.add(paths.check(rel))
        return removed

    def _landed_then_removed(self, root_fd: int) -> set[str]:
        """Files a stopped reload moved into place that are gone again: their staged copy
        was moved, so only a local deletion can have removed them."""
        removed: set[str] = set()
        for record in self._reload_records(LANDING_FILE):
            try:
                rel, staging_dir, name = record
                staged = f"{staging_dir}/{name}"
                paths.check(rel)
                paths.check(staged)
            except (ValueError, TypeError, KvolError):
                continue
            if not staging_dir.startswith(_Staging.PREFIX):
                continue
            if fsops.lstat(root_fd, rel) is None and fsops.lstat(root_fd, staged) is None:
                removed.add(rel)
        return removed

    def _finish_emptied_dirs(self, root_fd: int, kept: set[str], removed: set[str]) -> None:
        """Remove the directories a stopped reload emptied and was about to remove: those
        the volume no longer has (not in ``kept``), empty now, with a file the reload
        removed (``removed``) below them. Left, one would read as a directory this copy
        emptied itself, a change of its own that its next commit would publish."""
        index = self.index
        candidates = {a for rel in removed for a in paths.ancestors(rel)}
        for rel in sorted(candidates, reverse=True):  # deepest first
            if rel not in index.dirs or rel in kept or rel in index.files:
                continue
            if fsops.is_empty_dir(root_fd, rel) and fsops.remove_empty_dir(root_fd, rel):
                index.dirs.discard(rel)
                index.explicit_dirs.discard(rel)

    def _recover(self) -> None:
        """Settle a reload that stopped midway (killed, or failed), from its journal.

        The index is the one from before the reload. Each path the reload was to touch is
        looked at: a file that holds the content the reload was writing landed (it is
        recorded clean, with its new record), a path the reload was deleting that is gone
        is forgotten, and directories are recorded as they stand. Everything else keeps
        its old entry: an untouched file is still clean at the old base, and a local change
        is still a local change. The base stays where it was; the next reload finishes.
        """
        path = self.meta_dir / JOURNAL_FILE
        try:
            journal = json.loads(path.read_bytes())
            # As the log has them: a record whose parts do not add up (older versions
            # wrote some) is one unreadable file, never a copy no command can open.
            files = {
                str(p): FileRecord.from_list(r, check_size=False)
                for p, r in journal["files"].items()
            }
            dirs = [str(p) for p in journal["dirs"]]
            explicit = {str(p) for p in journal["explicit_dirs"]}
            gone = [str(p) for p in journal["gone"]]
            # Absent in journals of older versions: every missing file counts as removed.
            present = journal.get("gone_present")
            present_at_start = None if present is None else {str(p) for p in present}
            journal_base = int(journal["base"])
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError, AttributeError, CorruptData) as exc:
            raise CorruptData(f"reload journal {path} is unreadable: {exc}") from exc
        # The index as saved (the reload changed the one in memory, not the file).
        index = self.index = Index.load(self.meta_dir / INDEX_FILE)
        self._index_sig = _file_sig(self.meta_dir / INDEX_FILE)
        if index.base != journal_base:
            self._drop_journal()  # the reload finished: its index was saved
            return
        for rel in [*files, *dirs, *gone]:
            paths.check(rel)
        root_fd = fsops.open_root(str(self.root))
        try:
            removed_since = self._landed_then_removed(root_fd)
            removed_by_reload = self._removed_by_reload()
            for rel in gone:
                st = fsops.lstat(root_fd, rel)
                if (
                    st is None
                    and present_at_start is not None
                    and rel in present_at_start
                    and rel not in removed_by_reload
                ):
                    # There when the reload began, never removed by it: deleted here, a
                    # deletion for the next commit (the volume's own went in after base).
                    continue
                if st is None:
                    index.files.pop(rel, None)
                if st is None or not stat.S_ISDIR(st.st_mode):
                    index.dirs.discard(rel)
                    index.explicit_dirs.discard(rel)
            for rel in dirs:
                st = fsops.lstat(root_fd, rel)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    index.files.pop(rel, None)
                    index.dirs.add(rel)
                    if rel in explicit:
                        index.explicit_dirs.add(rel)
                elif st is None and rel in removed_by_reload:
                    # The reload removed the file where the volume now has a directory,
                    # and stopped before making it: not a deletion of this copy's.
                    index.files.pop(rel, None)
            for rel, record in files.items():
                st = fsops.lstat(root_fd, rel)
                if st is None and rel in removed_since:
                    # Landed, then deleted here: a deletion to commit, not a file to write.
                    index.files[rel] = IndexEntry(record, _UNMATCHED)
                    continue
                if st is None or not stat.S_ISREG(st.st_mode):
                    continue
                index.dirs.discard(rel)
                index.explicit_dirs.discard(rel)
                entry = index.files.get(rel)
                if entry is not None and self._is_clean(root_fd, rel, entry, st):
                    if (
                        entry.record is not None
                        and entry.record.hash == record.hash
                        and fsops.safe_mode(entry.record.mode) == fsops.safe_mode(record.mode)
                    ):
                        entry.record = record
                    continue  # the old file, untouched: the next reload replaces it
                landed = self._holds(root_fd, rel, record)
                if landed is not None:
                    index.files[rel] = IndexEntry(record, Signature.of(landed))
            self._finish_emptied_dirs(root_fd, set(dirs), removed_by_reload)
            self._remove_temporaries(root_fd, {paths.parent(p) for p in files})
            _Staging.remove_stale(root_fd)
        finally:
            os.close(root_fd)
        self._save_index()
        self._drop_journal()

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

    @staticmethod
    def _remove_temporaries(root_fd: int, dirs: set[str]) -> None:
        """Remove the temporary files a stopped download left in ``dirs``."""
        for rel_dir in dirs:
            try:
                dfd = fsops.open_dir(root_fd, rel_dir)
            except (OSError, KvolError):
                continue
            try:
                for name in os.listdir(dfd):
                    if name.startswith(fsops.TEMP_PREFIX):
                        with contextlib.suppress(OSError):
                            os.unlink(name, dir_fd=dfd)
            finally:
                os.close(dfd)

    # -- applying a view --------------------------------------------------------------------

    def _apply(self, view: State, touched: set[str]) -> tuple[list[str], int]:
        """Make the tree match ``view`` at ``touched`` paths, keeping local changes.

        Nothing that is not clean is ever removed or overwritten. A local file (or other
        non-directory) that is not clean where the view has a directory stays, and the
        view's files under it are not written: they are recorded as in the volume and
        missing here, so status shows them as deleted, and this copy's next commit, the
        later write, publishes its file there (which replaces them in the volume).
        """
        index = self.index
        all_dirs = view.all_dirs()
        kept: list[str] = []
        #: Paths where a kept local non-directory stands in the way of the view's directory.
        blocked: set[str] = set()
        root_fd = fsops.open_root(str(self.root))
        staging: _Staging | None = None
        # Before each removal (see REMOVAL_FILE).
        removals = _RemovalLog(self.meta_dir / REMOVAL_FILE)
        removed: list[str] = []
        try:
            # All content first, into a staging directory: content that fails to download
            # or to verify stops the reload before anything in the tree has changed.
            staging = self._stage(root_fd, view, self._may_need_content(view, touched))
            # A directory the volume held only by its files goes with its last file; one
            # this copy had already emptied itself (and kept) stays: that is its own change,
            # which its next commit publishes as a directory (see _dirs_left_empty).
            near = touched | {a for rel in touched for a in paths.ancestors(rel)}
            emptied_here = {
                d
                for d in near
                if d in index.dirs
                and d not in index.explicit_dirs
                and d not in index.files
                and fsops.is_empty_dir(root_fd, d)
            }
            vanished = {
                a
                for rel in touched
                for a in paths.ancestors(rel)
                if a in index.dirs and a not in all_dirs
            }
            vanished -= emptied_here
            # Deletions, deepest first, so directories are empty when their turn comes.
            for rel in sorted(touched, reverse=True):
                if rel in view.files or rel in all_dirs:
                    continue
                st = fsops.lstat(root_fd, rel)
                if rel in index.dirs and rel not in index.files:
                    if rel in emptied_here:
                        continue  # this copy's own change (touched when the base was pruned)
                    if st is not None and stat.S_ISDIR(st.st_mode):
                        fsops.remove_empty_dir(root_fd, rel)  # local new files keep it
                    continue
                entry = index.files.get(rel)
                if entry is None or st is None:
                    index.files.pop(rel, None)
                    continue
                if self._is_clean(root_fd, rel, entry, st):
                    removals.note(rel)
                    fsops.remove_file(root_fd, rel)
                    del index.files[rel]
                    removed.append(rel)
                else:
                    # Changed here and not committed: it will be the last write.
                    del index.files[rel]
                    kept.append(rel)
            # ... so here too once empty (a local new file keeps it: a change to commit).
            for rel in sorted(vanished, reverse=True):
                st = fsops.lstat(root_fd, rel)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    fsops.remove_empty_dir(root_fd, rel)
            for rel in self._implied_only_by_deleted(root_fd, view, near, removed, emptied_here):
                fsops.remove_empty_dir(root_fd, rel)
            for rel in sorted(d for d in touched if d in all_dirs):
                if _under_any(rel, blocked):
                    continue
                st = fsops.lstat(root_fd, rel)
                if (
                    st is None
                    and rel in index.dirs
                    and (rel in index.explicit_dirs or rel not in view.dirs)
                ):
                    # Removed here and not committed: the removal is the last write. (A
                    # directory the volume only implied goes with its files, which is no
                    # change of its own: made explicit since, it is made here.)
                    continue
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    entry = index.files.get(rel)
                    if entry is not None and self._is_clean(root_fd, rel, entry, st):
                        removals.note(rel)
                        fsops.remove_file(root_fd, rel)
                        del index.files[rel]
                    elif stat.S_ISLNK(st.st_mode):
                        kept.append(rel)  # never replaced; writing under it fails below
                        continue
                    else:
                        kept.append(rel)
                        blocked.add(rel)
                        # The volume has no file here now; the local one is a new file.
                        index.files[rel] = IndexEntry(None, entry.sig if entry else None, True)
                        continue
                # The volume's file here is gone, and so is the copy's (it made a directory
                # here itself, or deleted the file): a record of it left behind would read
                # as a file above everything under this directory, and hide it all.
                index.files.pop(rel, None)
                try:
                    fsops.make_dirs(root_fd, rel)
                except NotADirectoryError:
                    blocked.add(rel)  # a kept local file above it
            known_dirs = index.dirs
            # Directories of the volume under a local file kept in their way are not here:
            # this copy never had them, so its commits must not remove them (they stay on
            # record as the volume's, and a later reload makes them once the file goes).
            index.dirs = {d for d in all_dirs if d not in blocked and not _under_any(d, blocked)}
            index.explicit_dirs = set(view.dirs)

            to_write: list[str] = []
            #: What each path to write held when found clean (None: nothing).
            found: dict[str, os.stat_result | None] = {}
            for rel in sorted(p for p in touched if p in view.files):
                record = view.files[rel]
                entry = index.files.get(rel)
                if _under_any(rel, blocked):
                    self._not_materialized(rel, record)
                    continue
                st = fsops.lstat(root_fd, rel)
                if (
                    st is not None
                    and stat.S_ISDIR(st.st_mode)
                    and rel in known_dirs
                    and rel not in emptied_here
                    and fsops.remove_empty_dir(root_fd, rel)
                ):
                    # A directory of the volume, emptied above, that a file replaced.
                    st = None
                if st is None:
                    if entry is not None and entry.sig is not None:
                        # Deleted here and not committed: the deletion is the last write.
                        entry.record = record
                        kept.append(rel)
                        continue
                    to_write.append(rel)
                    found[rel] = None
                    continue
                if entry is None or entry.sig is None:
                    landed = self._holds(root_fd, rel, record)
                    if landed is not None:
                        # A new local file with the very bytes the volume now has there:
                        # no change left to commit, and nothing to write.
                        racy = landed.st_mtime_ns >= time.time_ns() - RACY_NS
                        index.files[rel] = IndexEntry(record, Signature.of(landed), racy)
                        continue
                if entry is None or not self._is_clean(root_fd, rel, entry, st):
                    kept.append(rel)
                    # Stay "racy" so the next scan hashes it rather than trusting the stat.
                    index.files[rel] = IndexEntry(record, _kept_sig(entry, st), racy=True)
                    continue
                assert entry is not None
                if (
                    entry.record is not None
                    and entry.record.hash == record.hash
                    and fsops.safe_mode(entry.record.mode) == fsops.safe_mode(record.mode)
                ):
                    entry.record = record
                    continue
                to_write.append(rel)
                found[rel] = st
            kept_before = len(kept)
            stopped = self._install(root_fd, view, to_write, staging, found, kept)
            changed_meanwhile = len(kept) - kept_before
            for rel in stopped:
                # An ancestor is a local file that is kept (not a path this reload touched).
                self._not_materialized(rel, view.files[rel])
                for ancestor in paths.ancestors(rel):
                    st = fsops.lstat(root_fd, ancestor)
                    if st is not None and not stat.S_ISDIR(st.st_mode):
                        if ancestor not in kept:
                            kept.append(ancestor)
                        break
        finally:
            removals.close()
            if staging is not None:
                staging.remove(root_fd)
            os.close(root_fd)
        return kept, len(to_write) - len(stopped) - changed_meanwhile

    def _implied_only_by_deleted(
        self,
        root_fd: int,
        view: State,
        near: set[str],
        removed: list[str],
        emptied_here: set[str],
    ) -> list[str]:
        """Empty directories that the volume now has only through files this copy deleted:
        those this reload emptied (its removals took their last files here), and those the
        volume had explicitly and no longer does. Deepest first. Such a directory goes as
        one the volume dropped would (the copy's tree is the volume's plus its own changes,
        and nothing there implies it). One the copy emptied itself of what the volume only
        implied stays (its own change, published as a directory), as does one the volume
        records explicitly."""
        index = self.index
        was_explicit = {d for d in near if d in index.explicit_dirs and d not in view.dirs}
        candidates = {
            a
            for a in was_explicit | {a for rel in removed for a in paths.ancestors(rel)}
            if a in index.dirs
            and a not in view.dirs
            and a not in emptied_here
            and fsops.is_empty_dir(root_fd, a)
        }
        if not candidates:
            return []
        for p in [*view.files, *view.dirs]:
            held = [a for a in paths.ancestors(p) if a in candidates]
            if not held:
                continue
            entry = index.files.get(p)
            # Deleted here (not written by this reload either: see the kept deletions).
            deleted_here = (
                p in view.files
                and entry is not None
                and entry.sig is not None
                and fsops.lstat(root_fd, p) is None
            )
            if not deleted_here:
                candidates.difference_update(held)  # something of the volume's stays here
        return sorted(candidates, reverse=True)

    def _may_need_content(self, view: State, touched: set[str]) -> list[str]:
        """The touched files of ``view`` whose content the tree may not have: all but those
        this copy has on record with the same content and mode (clean ones need nothing,
        and changed or deleted ones are kept)."""
        wanted = []
        for rel in sorted(p for p in touched if p in view.files):
            entry = self.index.files.get(rel)
            known = None if entry is None or entry.sig is None else entry.record
            record = view.files[rel]
            if (
                known is None
                or known.hash != record.hash
                or fsops.safe_mode(known.mode) != fsops.safe_mode(record.mode)
            ):
                wanted.append(rel)
        return wanted

    def _stage(self, root_fd: int, view: State, rels: list[str]) -> _Staging | None:
        if not rels:
            return None
        staging = _Staging.make(root_fd)
        reader = self.repo.reader()
        reader.prefetch(view.files[r] for r in rels)

        def fetch(number: int, rel: str) -> None:
            record = view.files[rel]
            name = str(number)
            st = fsops.stage_file(
                staging.fd,
                name,
                lambda fd: reader.write_to(record, fd),
                mode=self._view_mode(record.mode),
                mtime_ns=record.mtime_ns,
            )
            staging.files[rel] = (name, st)

        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="kvol-down") as pool:
                futures = [pool.submit(fetch, n, rel) for n, rel in enumerate(rels)]
            for future in futures:
                future.result()
        except BaseException:
            staging.remove(root_fd)
            raise
        finally:
            reader.release()
        return staging

    def _install(
        self,
        root_fd: int,
        view: State,
        rels: list[str],
        staging: _Staging | None,
        found: dict[str, os.stat_result | None],
        kept: list[str],
    ) -> list[str]:
        """Put ``rels`` in place from the staging directory (downloading any not staged).
        Returns those that could not be written because a local non-directory stands
        where a directory above them must be. A path written since it was ``found``
        clean (or created, where nothing was) is a local change: kept, added to ``kept``."""
        stopped: list[str] = []
        missing: list[str] = []
        landing = open(self.meta_dir / LANDING_FILE, "a", buffering=1)  # noqa: SIM115
        try:
            for rel in rels:
                staged = None if staging is None else staging.files.get(rel)
                if staging is None or staged is None:
                    missing.append(rel)
                    continue
                name, staged_st = staged
                # Before the move (see LANDING_FILE); a process kill keeps what was written.
                landing.write(json.dumps([rel, staging.name, name]) + "\n")
                try:
                    st, same = fsops.install_file(
                        root_fd, rel, staging.fd, name, staged_st, replaces=found.get(rel)
                    )
                except NotADirectoryError:
                    stopped.append(rel)
                    continue
                except fsops.ChangedMeanwhile:
                    kept.append(rel)
                    entry = self.index.files.get(rel)
                    # As any kept change: the volume's record, hashed again at the next scan.
                    sig = _kept_sig(entry, fsops.lstat(root_fd, rel))
                    self.index.files[rel] = IndexEntry(view.files[rel], sig, racy=True)
                    continue
                # Recorded as soon as it is in place, so that if another file fails the index
                # still matches the tree. A write in the instant after the move is caught by
                # hashing the file at the next scan.
                self.index.files[rel] = IndexEntry(view.files[rel], Signature.of(st), racy=not same)
        finally:
            landing.close()
        return sorted(stopped + self._download(root_fd, view, missing))

    def _not_materialized(self, rel: str, record: FileRecord) -> None:
        """``rel`` is in the volume as ``record`` but not written here: a kept local file
        stands where its directory should be."""
        entry = self.index.files.get(rel)
        if entry is not None:
            entry.record = record
        else:
            self.index.files[rel] = IndexEntry(record, None)

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

    def _download(self, root_fd: int, view: State, rels: list[str]) -> list[str]:
        """Write ``rels`` as ``view`` has them. Returns those that could not be written
        because a local non-directory stands where a directory above them must be."""
        stopped: list[str] = []
        if not rels:
            return stopped
        reader = self.repo.reader()
        reader.prefetch(view.files[r] for r in rels)

        def fetch(rel: str) -> None:
            record = view.files[rel]
            try:
                st = fsops.write_file(
                    root_fd,
                    rel,
                    lambda fd: reader.write_to(record, fd),
                    mode=self._view_mode(record.mode),
                    mtime_ns=record.mtime_ns,
                )
            except NotADirectoryError:
                stopped.append(rel)
                return
            # Recorded as soon as it is written, so that if another file fails the index
            # still matches the tree (nothing written here looks like a local change).
            self.index.files[rel] = IndexEntry(record, Signature.of(st))

        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="kvol-down") as pool:
                futures = [pool.submit(fetch, rel) for rel in rels]
            for future in futures:
                future.result()
        finally:
            reader.release()
        return sorted(stopped)

    # -- status -----------------------------------------------------------------------------

    def status(self) -> Status:
        with self._locked(settle=False):
            scan = self._scan()
        changed = []
        for rel, found in scan.candidates.items():
            entry = self.index.files.get(rel)
            if (
                entry is not None
                and entry.racy
                and entry.stat_key is not None
                and _found_key(found) == entry.stat_key
            ):
                continue  # only flagged for a re-hash, not known to differ
            changed.append(rel)
        uncommitted = sum(_found_key(scan.candidates[r])[0] for r in changed)
        self._set_uncommitted(uncommitted)
        deleted = sorted(scan.deleted | scan.dirs_removed)
        return Status(
            self.repo.volume_id,
            self.index.base,
            tuple(sorted(changed)),
            tuple(deleted),
            uncommitted,
        )

    @property
    def uncommitted_bytes(self) -> int:
        """Changed bytes not yet committed, as of the last status or commit."""
        return self._uncommitted

    def _set_uncommitted(self, value: int) -> None:
        metrics.UNCOMMITTED_BYTES.inc(value - self._uncommitted)
        self._uncommitted = value

    # -- autocommit and closing -------------------------------------------------------------

    def start_autocommit(self, interval_seconds: float, *, track_changes: bool = True) -> None:
        """Commit in the background every ``interval_seconds``; with ``track_changes``,
        finding changes from inotify events meanwhile (see :meth:`track_changes`)."""
        if interval_seconds <= 0:
            raise InvalidArgument("autocommit interval must be positive")
        if self.read_only or self._autocommit is not None:
            return
        self._stop.clear()
        if track_changes:
            self.track_changes()
        self._autocommit = threading.Thread(
            target=self._autocommit_loop,
            args=(interval_seconds,),
            name="kvol-autocommit",
            daemon=True,
        )
        self._autocommit.start()

    def _autocommit_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.commit()
                self.autocommit_error = None
            except KvolError as exc:
                # The changes stay in the copy; the next tick or the final commit retries.
                self.autocommit_error = exc
                log.warning("autocommit of %s failed (will retry): %s", self.root, exc)
            except Exception:
                log.exception("autocommit of %s failed unexpectedly (will retry)", self.root)

    def stop_autocommit(self) -> None:
        thread = self._autocommit
        if thread is None:
            return
        self._stop.set()
        thread.join()
        self._autocommit = None
        # Changes the events may not show (see kvol.tracker) are found by the full scan
        # of whatever commit comes next, such as a final one.
        self.stop_tracking()

    def track_changes(self, full_scan_seconds: float | None = None) -> bool:
        """Find changes from inotify events rather than a stat of every file, for as long
        as this process holds the copy open (autocommit does; see kvol.tracker), with a
        full scan at least every ``full_scan_seconds``. Returns whether tracking is on: not
        where inotify is unavailable, nor for a layout that finds changes its own way."""
        from kvol import tracker

        if type(self)._scan is not WorkingCopy._scan:
            return False
        with self._thread_lock:
            if self._tracker is None:
                try:
                    self._tracker = tracker.ChangeTracker(
                        self.root,
                        full_scan_seconds=full_scan_seconds or tracker.DEFAULT_FULL_SCAN_SECONDS,
                    )
                except tracker.TrackingUnavailable as exc:
                    log.warning("commits of %s scan every file: %s", self.root, exc)
                    return False
            elif full_scan_seconds:
                self._tracker.full_scan_seconds = full_scan_seconds
            return self._tracker.active

    def stop_tracking(self) -> None:
        with self._thread_lock:
            tracker, self._tracker = self._tracker, None
        if tracker is not None:
            tracker.close()

    def _forget_tracked_changes(self) -> None:
        """The index is about to change in place outside a commit: scan everything next."""
        if self._tracker is not None:
            self._tracker.request_full_scan("the index changed outside a commit")

    def close(self, final_commit: bool = True) -> CommitResult | None:
        """Stop autocommit and make the final commit. If it fails, the error is raised and
        every change is still in the directory: nothing is dropped to let a close finish."""
        if self._closed:
            return None
        self.stop_autocommit()
        self.stop_tracking()  # the final commit scans every file
        result = self.commit() if final_commit and not self.read_only else None
        self._closed = True
        if not self.read_only:
            metrics.WRITERS.dec()
        self._set_uncommitted(0)
        return result

    def __enter__(self) -> WorkingCopy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(final_commit=exc[0] is None)


def _file_sig(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


#: A file a commit publishes: its record, the stat it had when read, whether to hash it
#: again at the next scan.
_Put = tuple[FileRecord, Signature | SigTuple | bytes, bool]


@dataclass
class _Published:
    """How a commit changes the index once its entry has landed."""

    gone: list[str]
    removed_dirs: list[str]
    dirs_added: list[str]
    #: Path -> (its record, the stat it had when read, hash it again at the next scan).
    puts: dict[str, _Put]


#: The signature of a file of the volume this copy saw but holds no match of (deleted
#: here, or a local version kept over it by a reload): no file has inode 0, so it never
#: matches, and a commit publishes what stands there, or the deletion. (No signature at
#: all means the copy never had the file: a local change hid it, and no commit of the
#: copy may delete it.)
_UNMATCHED = Signature(0, 0, 0, 0, 0)


def _kept_sig(entry: IndexEntry | None, st: os.stat_result | None) -> Signature | None:
    """The signature to keep for a path where a reload kept what the copy has over the
    volume's file. A local file is a version of that file: the copy has seen the volume's,
    whatever becomes of its own. A local directory hides it, unless the copy had it."""
    sig = None if entry is None else entry.sig
    if sig is None and st is not None and stat.S_ISREG(st.st_mode):
        return _UNMATCHED
    return sig


class _RemovalLog:
    """REMOVAL_FILE, opened at the first removal. A line is written before each removal;
    line-buffered, so a process kill keeps every line written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def note(self, rel: str) -> None:
        if self._file is None:
            self._file = open(self.path, "a", buffering=1)  # noqa: SIM115
        self._file.write(json.dumps(rel) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@dataclass
class _Staging:
    """A directory at the top of the copy holding a reload's downloads until they are
    moved into place (its name starts with the temporary prefix: scans skip it)."""

    name: str
    fd: int
    #: Path in the volume -> (name in the staging directory, the file as written).
    files: dict[str, tuple[str, fsops.Staged]] = field(default_factory=dict)

    PREFIX = fsops.TEMP_PREFIX + "reload-"

    @classmethod
    def make(cls, root_fd: int) -> _Staging:
        name = cls.PREFIX + secrets.token_hex(6)
        os.mkdir(name, 0o700, dir_fd=root_fd)
        return cls(name, os.open(name, _SCAN_DIR_FLAGS, dir_fd=root_fd))

    def remove(self, root_fd: int) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            fsops.remove_tree_at(root_fd, self.name)
        except FileNotFoundError:
            pass
        except OSError as exc:  # replaced meanwhile (by a symlink, say): never followed
            log.warning("could not remove the reload's staging directory %s: %s", self.name, exc)

    @classmethod
    def remove_stale(cls, root_fd: int) -> None:
        """Remove staging directories a reload that died left behind."""
        for name in os.listdir(root_fd):
            if not name.startswith(cls.PREFIX):
                continue
            with contextlib.suppress(OSError):  # gone, or not ours (not a directory)
                if stat.S_ISDIR(os.stat(name, dir_fd=root_fd, follow_symlinks=False).st_mode):
                    fsops.remove_tree_at(root_fd, name)


def _release_freed_memory() -> None:
    """Give the system back the heap memory freed so far. glibc keeps freed blocks of the
    heap for reuse, and after a large commit phase (16 MiB pack buffers, the encoded
    journal and log entry) that is tens of MiB the next phase, made of small objects
    Python keeps elsewhere, never reuses. A no-op where the C library has no
    malloc_trim."""
    import ctypes  # only large commits come here

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return
    trim(0)


def _sharing(key: SigTuple, record: FileRecord) -> SigTuple:
    """``key`` made of the record's own ints where they are equal (its size, its mtime as
    the ctime of a file not changed since it was written, its mode): after a commit of
    100,000 files the index then holds one int of each file's stat, not five."""
    size, mtime_ns, ino, ctime_ns, mode = key
    return (
        record.size if size == record.size else size,
        record.mtime_ns if mtime_ns == record.mtime_ns else mtime_ns,
        ino,
        record.mtime_ns if ctime_ns == record.mtime_ns else ctime_ns,
        record.mode if mode == record.mode else mode,
    )


def _sig_list(sig: Signature | SigTuple | bytes) -> list[int]:
    if isinstance(sig, bytes):
        return list(unpack_sig(sig))
    return list(sig) if isinstance(sig, tuple) else sig.to_list()


def _ops_payload(ops: list[Op] | tuple[Op, ...]) -> Any:
    """Operations as an entry stores them, as JSON reads them back (lists, not tuples)."""
    payload = Entry(tuple(ops), 0.0, Writer("", "", 0), 0).to_payload()["ops"]
    return json.loads(json.dumps(payload))


def _clear(root: Path, keep: Path | None) -> None:
    """Remove everything in ``root`` except ``keep``, never following a symlink."""
    root_fd = fsops.open_root(str(root))
    try:
        for name in os.listdir(root_fd):
            if keep is not None and root / name == keep:
                continue
            st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                fsops.remove_tree_at(root_fd, name)
            else:
                os.unlink(name, dir_fd=root_fd)
    finally:
        os.close(root_fd)


def _outermost(dirs: set[str]) -> set[str]:
    return {d for d in dirs if not any(a in dirs for a in paths.ancestors(d))}


def _under_any(path: str, dirs: set[str]) -> bool:
    return any(a in dirs for a in paths.ancestors(path))
