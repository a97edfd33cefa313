"""Working copies: a plain directory plus an index, based on one commit of a volume.

Programs read and write the directory at disk speed. ``commit()`` publishes what changed
since the copy last matched the volume (found by stat, so untouched files are never read);
``reload()`` applies newer commits and keeps local changes that are not committed yet,
because they will be the last write. See DESIGN: Working copies.

Subclasses may change how changes are found (``_scan``): the copy-on-write layout of the
CSI plugin only walks its upper layer.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

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
    InvalidArgument,
    KvolError,
    LimitExceeded,
    NotFound,
    ReadOnly,
    VolumeBusy,
)
from kvol.index import RACY_NS, Index, IndexEntry, Signature
from kvol.model import DeleteOp, FileRecord, Limits, MkdirOp, Op, PutOp, State
from kvol.repo import Repo
from kvol.store import Store, open_store

log = logging.getLogger(__name__)

#: Directories are opened this way to scan them: never through a symlink.
_SCAN_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

CONFIG_FILE = "config.json"
INDEX_FILE = "index"
LOCK_FILE = "lock"
#: Parallel reads and uploads during a commit, and downloads during a reload.
DEFAULT_CONCURRENCY = 8
#: Small files read and packed by one task of a commit.
SMALL_BATCH = 256


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


@dataclass
class ScanResult:
    #: New or possibly modified files, with their stat.
    candidates: dict[str, os.stat_result] = field(default_factory=dict)
    #: Files the index knows that are gone.
    deleted: set[str] = field(default_factory=set)
    dirs_added: set[str] = field(default_factory=set)
    dirs_removed: set[str] = field(default_factory=set)


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
        self._closed = False
        self._uncommitted = 0
        #: Highest seq this process knows is taken; later commits probe after it.
        self._known_head = 0
        self._index_sig = _file_sig(meta_dir / INDEX_FILE)
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
        """Make a new working copy of the volume's head in ``root`` (empty or missing)."""
        root_path = Path(root).absolute()
        meta_path = Path(meta_dir).absolute() if meta_dir else root_path / paths.RESERVED
        root_path.mkdir(parents=True, exist_ok=True)
        leftovers = [p.name for p in root_path.iterdir() if p != meta_path]
        if leftovers:
            raise InvalidArgument(
                f"{root_path} is not empty: a working copy needs an empty directory"
            )
        if (meta_path / CONFIG_FILE).exists():
            raise InvalidArgument(f"{root_path} is a working copy already")
        repo.meta  # noqa: B018 - fail early, before anything is written, if the volume is gone
        meta_path.mkdir(parents=True, exist_ok=True)
        config = {
            "format": 1,
            "store": repo.store.url,
            "volume_id": repo.volume_id,
            "read_only": read_only,
        }
        (meta_path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        wc = cls(
            repo,
            root_path,
            meta_path,
            Index(repo.volume_id),
            read_only=read_only,
            concurrency=concurrency,
        )
        with wc._locked():
            state = repo.state()
            touched = set(state.files) | state.all_dirs()
            wc._apply(state, touched)
            wc.index.base = state.seq
            wc._save_index()
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
        return cls(
            Repo(store, volume_id),
            root_path,
            meta_path,
            index,
            read_only=read_only,
            concurrency=concurrency,
        )

    # -- locking ----------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One commit or reload at a time, across threads and processes."""
        with self._thread_lock:
            fd = os.open(self.meta_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # Another process may have committed or reloaded while we waited.
                self._refresh_index()
                yield
            finally:
                os.close(fd)

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
                                log.debug("not committed (not a regular file): %s", rel)
                                continue
                            known = files.get(rel)
                            if known is None:
                                candidates[rel] = st
                                continue
                            seen.append(rel)
                            if known.racy or known.stat_key != (
                                st.st_size,
                                st.st_mtime_ns,
                                st.st_ino,
                                st.st_ctime_ns,
                                st.st_mode & 0o7777,
                            ):  # as IndexEntry.is_clean, inline: this runs per file
                                candidates[rel] = st
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
        removed_dirs = _outermost(scan.dirs_removed)
        file_deletes = sorted(p for p in scan.deleted if not _under_any(p, removed_dirs))
        ops: list[Op] = [DeleteOp(d) for d in sorted(removed_dirs)]
        ops += [DeleteOp(p) for p in file_deletes]
        ops += [MkdirOp(d) for d in sorted(scan.dirs_added)]

        uploads, stats = self._upload(scan.candidates)
        puts: dict[str, tuple[FileRecord, os.stat_result]] = {}
        refreshed: dict[str, os.stat_result] = {}
        deferred: list[str] = []
        for rel, up in sorted(uploads.items()):
            st = stats[rel]
            if not up.stable:
                deferred.append(rel)
                continue
            mode = st.st_mode & 0o7777
            entry = self.index.files.get(rel)
            if (
                entry is not None
                and entry.record is not None
                and entry.record.hash == up.hash
                and entry.record.mode == mode
            ):
                refreshed[rel] = st  # touched, not changed: nothing to publish
                continue
            record = FileRecord(up.size, st.st_mtime_ns, mode, up.hash, up.parts)
            puts[rel] = (record, st)
            ops.append(PutOp(rel, record))

        def racy(st: os.stat_result) -> bool:
            return st.st_mtime_ns >= scan_started_ns - RACY_NS

        for rel, st in refreshed.items():
            entry = self.index.files[rel]
            entry.sig, entry.racy = Signature.of(st), racy(st)
        if not ops:
            if refreshed:
                self._save_index()
            return CommitResult(None, deferred=tuple(deferred))

        self._check_limits(removed_dirs, file_deletes, puts, scan.dirs_added)
        seq = self.repo.publish(ops, self.index.base, message, known_head=self._known_head)
        self._known_head = seq

        index = self.index
        if seq == index.base + 1:
            # Nobody published in between: the copy now matches the volume at seq, and
            # the next commit need not probe the log positions this one took.
            index.base = seq
        for d in removed_dirs:
            for p in [p for p in index.files if paths.is_under(p, d)]:
                del index.files[p]
            index.dirs = {x for x in index.dirs if not paths.is_under(x, d)}
            index.explicit_dirs = {x for x in index.explicit_dirs if not paths.is_under(x, d)}
        for p in file_deletes:
            index.files.pop(p, None)
        index.dirs |= scan.dirs_added
        index.explicit_dirs |= scan.dirs_added
        for rel, (record, st) in puts.items():
            index.files[rel] = IndexEntry(record, Signature.of(st), racy(st))
            index.dirs.update(paths.ancestors(rel))
        self._save_index()
        return CommitResult(
            seq,
            files=len(puts),
            deleted=len(removed_dirs) + len(file_deletes),
            bytes=sum(r.size for r, _ in puts.values()),
            sent_bytes=sum(u.sent_bytes for u in uploads.values()),
            deferred=tuple(deferred),
        )

    def _upload(
        self, candidates: dict[str, os.stat_result]
    ) -> tuple[dict[str, Uploaded], dict[str, os.stat_result]]:
        if not candidates:
            return {}, {}
        root_fd = fsops.open_root(str(self.root))
        stats: dict[str, os.stat_result] = {}

        def opener(rel: str) -> Any:
            def open_it() -> tuple[IO[bytes], os.stat_result]:
                fd = fsops.open_file(root_fd, rel)
                st = os.fstat(fd)
                stats[rel] = st
                return cast(IO[bytes], os.fdopen(fd, "rb", buffering=0)), st

            return open_it

        small = sorted(rel for rel, st in candidates.items() if st.st_size <= PACK_THRESHOLD)
        large = [rel for rel, st in candidates.items() if st.st_size > PACK_THRESHOLD]

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
                for exc in failures.values():
                    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
                        continue  # removed or replaced since the scan: the next commit sees it
                    if exc is not None:
                        raise exc
        finally:
            os.close(root_fd)
        return results, stats

    @staticmethod
    def _read_small(
        root_fd: int, rels: list[str], stats: dict[str, os.stat_result]
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
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                except OSError as exc:
                    yield rel, exc, False
                    continue
                try:
                    before = os.fstat(fd)
                    if not stat.S_ISREG(before.st_mode):
                        yield rel, IsADirectoryError(errno.EISDIR, "not a regular file", rel), False
                        continue
                    data = _read_up_to(fd, PACK_THRESHOLD + 1)
                    after = os.fstat(fd)
                finally:
                    os.close(fd)
                stats[rel] = before
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
        puts: dict[str, tuple[FileRecord, os.stat_result]],
        dirs_added: set[str],
    ) -> None:
        limits: Limits = self.repo.meta.limits
        if limits == Limits():
            return
        sizes = {p: e.record.size for p, e in self.index.files.items() if e.record is not None}
        for d in removed_dirs:
            for p in [p for p in sizes if paths.is_under(p, d)]:
                del sizes[p]
        for p in file_deletes:
            sizes.pop(p, None)
        for rel, (record, _) in puts.items():
            sizes[rel] = record.size
            if limits.max_file_size is not None and record.size > limits.max_file_size:
                raise LimitExceeded(
                    f"{rel} is {record.size:,} bytes, over the volume's file size limit of "
                    f"{limits.max_file_size:,}; nothing was published and your files are unchanged"
                )
        if limits.max_files is not None and len(sizes) > limits.max_files:
            raise LimitExceeded(
                f"the volume would hold {len(sizes):,} files, over its limit of {limits.max_files:,}; "
                "nothing was published and your files are unchanged"
            )
        total = sum(sizes.values())
        if limits.max_bytes is not None and total > limits.max_bytes:
            raise LimitExceeded(
                f"the volume would hold {total:,} bytes, over its limit of {limits.max_bytes:,}; "
                "nothing was published and your files are unchanged"
            )
        if limits.max_files_per_directory is not None:
            # The directories as this commit leaves them: removed trees gone, new ones in.
            dirs = {
                d for d in self.index.dirs if not any(paths.is_under(d, r) for r in removed_dirs)
            }
            counts = State(
                0,
                {p: r for p, (r, _) in puts.items()} | {p: _placeholder for p in sizes},
                dirs | dirs_added,
            ).children_counts()
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
        if first is None:
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
        touched: set[str] = set()
        view.apply(first, base + 1, touched)
        for seq, entry in self.repo.entries_after(base + 1):
            view.apply(entry, seq, touched)
        try:
            kept, written = self._apply(view, touched)
        except BaseException:
            # Keep what was applied on record, at the old base: the next reload does the rest.
            self._save_index()
            raise
        self.index.base = view.seq
        self._save_index()
        return ReloadResult(base, view.seq, written, tuple(sorted(kept)))

    def _apply(self, view: State, touched: set[str]) -> tuple[list[str], int]:
        """Make the tree match ``view`` at ``touched`` paths, keeping local changes."""
        index = self.index
        all_dirs = view.all_dirs()
        kept: list[str] = []
        root_fd = fsops.open_root(str(self.root))
        try:
            # Deletions, deepest first, so directories are empty when their turn comes.
            for rel in sorted(touched, reverse=True):
                if rel in view.files or rel in all_dirs:
                    continue
                st = fsops.lstat(root_fd, rel)
                if rel in index.dirs and rel not in index.files:
                    if st is not None and stat.S_ISDIR(st.st_mode):
                        fsops.remove_empty_dir(root_fd, rel)  # local new files keep it
                    continue
                entry = index.files.pop(rel, None)
                if entry is None or st is None:
                    continue
                if self._is_clean(root_fd, rel, entry, st):
                    fsops.remove(root_fd, rel)
                else:
                    kept.append(rel)  # changed here and not committed: it will be the last write
            for rel in sorted(d for d in touched if d in all_dirs):
                st = fsops.lstat(root_fd, rel)
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    entry = index.files.get(rel)
                    if entry is None or not self._is_clean(root_fd, rel, entry, st):
                        kept.append(rel)
                        continue
                    index.files.pop(rel, None)
                fsops.make_dirs(root_fd, rel)
            known_dirs = index.dirs
            index.dirs = all_dirs
            index.explicit_dirs = set(view.dirs)

            to_write: list[str] = []
            for rel in sorted(p for p in touched if p in view.files):
                record = view.files[rel]
                entry = index.files.get(rel)
                st = fsops.lstat(root_fd, rel)
                if (
                    st is not None
                    and stat.S_ISDIR(st.st_mode)
                    and rel in known_dirs
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
                    continue
                if entry is None or not self._is_clean(root_fd, rel, entry, st):
                    kept.append(rel)
                    # Stay "racy" so the next scan hashes it rather than trusting the stat.
                    index.files[rel] = IndexEntry(record, entry.sig if entry else None, racy=True)
                    continue
                assert entry is not None
                if (
                    entry.record is not None
                    and entry.record.hash == record.hash
                    and entry.record.mode == record.mode
                ):
                    entry.record = record
                    continue
                to_write.append(rel)
            self._download(root_fd, view, to_write)
        finally:
            os.close(root_fd)
        return kept, len(to_write)

    def _is_clean(self, root_fd: int, rel: str, entry: IndexEntry, st: os.stat_result) -> bool:
        """Does the local file still hold what the index says? Racy files are hashed."""
        if not stat.S_ISREG(st.st_mode) or entry.record is None or entry.sig is None:
            return False
        if entry.is_clean(st):
            return True
        if not entry.racy or Signature.of(st) != entry.sig:
            return False
        fd = fsops.open_file(root_fd, rel)
        try:
            same = hash_file(fd, st.st_size, self.repo.meta.chunk_size) == entry.record.hash
        finally:
            os.close(fd)
        if same:
            entry.racy = False
        return same

    def _download(self, root_fd: int, view: State, rels: list[str]) -> None:
        if not rels:
            return
        reader = self.repo.reader()
        reader.prefetch(view.files[r] for r in rels)

        def fetch(rel: str) -> None:
            record = view.files[rel]
            st = fsops.write_file(
                root_fd,
                rel,
                lambda fd: reader.write_to(record, fd),
                mode=record.mode,
                mtime_ns=record.mtime_ns,
            )
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

    # -- status -----------------------------------------------------------------------------

    def status(self) -> Status:
        with self._locked():
            scan = self._scan()
        changed = []
        for rel, st in scan.candidates.items():
            entry = self.index.files.get(rel)
            if (
                entry is not None
                and entry.racy
                and entry.sig is not None
                and Signature.of(st) == entry.sig
            ):
                continue  # only flagged for a re-hash, not known to differ
            changed.append(rel)
        uncommitted = sum(scan.candidates[r].st_size for r in changed)
        self._set_uncommitted(uncommitted)
        deleted = sorted(scan.deleted | scan.dirs_removed)
        return Status(
            self.repo.volume_id,
            self.index.base,
            tuple(sorted(changed)),
            tuple(deleted),
            uncommitted,
        )

    def _set_uncommitted(self, value: int) -> None:
        metrics.UNCOMMITTED_BYTES.inc(value - self._uncommitted)
        self._uncommitted = value

    # -- autocommit and closing -------------------------------------------------------------

    def start_autocommit(self, interval_seconds: float) -> None:
        """Commit in the background every ``interval_seconds``."""
        if interval_seconds <= 0:
            raise InvalidArgument("autocommit interval must be positive")
        if self.read_only or self._autocommit is not None:
            return
        self._stop.clear()
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

    def close(self, final_commit: bool = True) -> CommitResult | None:
        """Stop autocommit and make the final commit. If it fails, the error is raised and
        every change is still in the directory: nothing is dropped to let a close finish."""
        if self._closed:
            return None
        self.stop_autocommit()
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


_placeholder = FileRecord(0, 0, 0, "0" * 64, ())


def _file_sig(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _read_up_to(fd: int, limit: int) -> bytes:
    """Read from ``fd`` until its end or ``limit`` bytes (reads may come back short)."""
    pieces = []
    left = limit
    while left > 0:
        piece = os.read(fd, left)
        if not piece:
            break
        pieces.append(piece)
        left -= len(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _outermost(dirs: set[str]) -> set[str]:
    return {d for d in dirs if not any(a in dirs for a in paths.ancestors(d))}


def _under_any(path: str, dirs: set[str]) -> bool:
    return any(a in dirs for a in paths.ancestors(path))
