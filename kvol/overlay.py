"""Copy-on-write working copies on an overlay mount (DESIGN: Fast path).

The mount primitives it stands on are in kvol/mounting.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvol import fsops, gcpause, image_lowers, layout, metrics, paths
from kvol.blobfill import BlobFiller
from kvol.errors import CorruptData, InvalidArgument, KvolError
from kvol.index import UNMATCHED, Index, IndexEntry
from kvol.lazy import STATE_DIR as LAZY_STATE_DIR
from kvol.lazy import LazyFiller, entry_name, is_placeholder
from kvol.model import FileRecord, State
from kvol.mounting import (
    MountError,
    is_mountpoint,
    mount_overlay,
    mounts_under,
    overlays_on,
    unmount,
)
from kvol.repo import Repo
from kvol.workcopy import (
    CONFIG_FILE,
    DEFAULT_CONCURRENCY,
    INDEX_FILE,
    ReloadResult,
    ScanResult,
    WorkingCopy,
)

log = logging.getLogger(__name__)

# -- the node's content cache -----------------------------------------------------------

#: A temporary file of the cache older than this was left by a killed fill.
STALE_TEMP_SECONDS = 3600


class ContentCache:
    """Immutable local copies of volume files, shared by every lower snapshot here.

    A snapshot hard-links its files from here, and a hard link shares the inode's mode and
    mtime, so an entry is one file *as the volume has it*: content, permission bits and
    mtime (``<hash>.<mode>.<mtime_ns>``). Setuid, setgid and sticky bits are never set:
    the entries are root's files, and a volume must not plant setuid-root programs. Entries are never written after they are renamed into
    place; overlayfs copies a file up before anyone writes it, so linking them into lower
    layers is safe. Unchanged files keep their record across commits, so every snapshot of
    a volume reuses what the previous one fetched.

    With ``max_bytes`` (0: no limit) the entries no snapshot links are evicted, least
    recently used first, until the cache's apparent size is within the limit. An entry a
    snapshot links (link count above 1) or that a build is about to link (held) is never
    evicted, so the cache may stay above the limit while snapshots need more. Recency is
    kept in memory; a new process orders what it finds by each entry's last access or
    link change (``max(atime, ctime)``: the mtime is part of the entry's identity, and a
    snapshot built or dropped changes the ctime of every entry it links).

    With ``lazy`` (root, kernel 6.14+, see :mod:`kvol.lazy`) :meth:`place` makes missing
    entries placeholders that are filled on first open and in the background
    (``prefetch``), instead of :meth:`fill` downloading them first. A cache that finds
    placeholders a previous process left starts filling them whatever ``lazy`` says:
    none may ever be opened unwatched by this process.
    """

    def __init__(
        self, root: str | Path, max_bytes: int = 0, *, lazy: bool = False, prefetch: bool = True
    ) -> None:
        if max_bytes < 0:
            raise InvalidArgument(f"cache size limit must be 0 (none) or more, not {max_bytes}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        #: Entry name -> apparent size, least recently used first; None until scanned.
        self._entries: OrderedDict[str, int] | None = None
        self._bytes = 0
        #: Entries a build holds (it may link them any moment): never evicted.
        self._held: dict[str, int] = {}
        #: Whether something may have become evictable since a trim last found nothing.
        self._dirty = True
        metrics.NODE_CACHE_LIMIT_BYTES.set(max_bytes)
        self.prefetch = prefetch
        self.lazy: LazyFiller | None = None
        if lazy or any((self.root / LAZY_STATE_DIR).glob("*.json")):
            self.lazy = LazyFiller(self.root).start()

    def close(self, *, release: bool = True) -> None:
        """Stop the lazy filler, if any (placeholders left are filled by the next one).
        Without ``release`` its fanotify group lives on: opens of placeholders wait for
        the next process instead (see :meth:`LazyFiller.stop`)."""
        if self.lazy is not None:
            self.lazy.stop(release=release)

    def adopt(self, repo: Repo) -> None:
        """Placeholders of ``repo``'s volume may be filled from it (a restarted process
        knows which volumes its placeholders belong to, not how to reach their store)."""
        if self.lazy is not None:
            self.lazy.register(repo)

    def place(
        self, repo: Repo, files: Mapping[str, FileRecord], tree: Path, hold: list[str]
    ) -> list[Path]:
        """Lazy :meth:`fill` and link: every file of ``files`` at its path under ``tree``
        (a directory nobody else sees yet, its directories made), linked from its entry,
        a placeholder where the entry was missing; nothing downloaded. Returns the
        placeholders made (for :meth:`LazyFiller.prefetch`)."""
        if self.lazy is None:
            raise InvalidArgument("this content cache is not lazy")
        records = list(files.values())
        self._hold(records, hold)
        base = str(tree)
        items = [(Path(base, rel), self.path(r), r) for rel, r in files.items()]
        placed = self.lazy.place(repo, items)
        new = set(placed)
        self._touch([e.name for _, e, _ in items if e not in new])
        sizes = {e: r.size for _, e, r in items}
        for entry in placed:
            self._added(entry.name, sizes[entry])
        metrics.NODE_CACHE_MISSES.inc(len(placed))
        metrics.NODE_CACHE_HITS.inc(len(records) - len(placed))
        return placed

    def _hold(self, records: list[FileRecord], hold: list[str]) -> None:
        names = [entry_name(r) for r in records]
        with self._lock:
            for name in names:
                self._held[name] = self._held.get(name, 0) + 1
        hold.extend(names)

    def path(self, record: FileRecord) -> Path:
        h = record.hash
        return self.root / h[:2] / entry_name(record)

    def has(self, record: FileRecord) -> bool:
        return self.path(record).exists()

    @property
    def size(self) -> int:
        """Apparent bytes of every entry (those snapshots link included)."""
        with self._lock:
            self._ensure_scanned()
            return self._bytes

    @contextlib.contextmanager
    def holding(self) -> Iterator[list[str]]:
        """A hold for a snapshot build: the entries :meth:`fill` puts in it are never
        evicted until the block ends (by then the snapshot links them)."""
        held: list[str] = []
        try:
            yield held
        finally:
            with self._lock:
                for name in held:
                    left = self._held[name] - 1
                    if left:
                        self._held[name] = left
                    else:
                        del self._held[name]
                self._dirty = True

    def released(self) -> None:
        """Snapshots were removed: entries they linked may be evictable now."""
        with self._lock:
            self._dirty = True

    def fill(
        self,
        repo: Repo,
        files: list[FileRecord] | Mapping[str, FileRecord],
        concurrency: int = 8,
        hold: list[str] | None = None,
    ) -> int:
        """Make sure every record has an entry; returns the number fetched from the store.
        With ``hold`` (from :meth:`holding`), the entries stay until the hold ends.
        ``files`` by path: a record that cannot be fetched is named by its path."""
        records = list(files.values()) if isinstance(files, Mapping) else files
        names = {id(r): p for p, r in files.items()} if isinstance(files, Mapping) else {}
        if hold is not None:
            self._hold(records, hold)
        missing: dict[Path, FileRecord] = {}
        hits: list[str] = []
        for record in records:
            path = self.path(record)
            if path in missing:
                continue
            if path.exists():
                hits.append(path.name)
            else:
                missing[path] = record
        self._touch(hits)
        if self.lazy is not None:
            # Placeholders among the hits are filled when opened, from this repo if need be.
            self.lazy.claim(repo, [p for p in (self.path(r) for r in records) if p not in missing])
        if not missing:
            metrics.NODE_CACHE_HITS.inc(len(hits))
            return 0
        # Room first, for what is about to arrive (entries held by builds are kept).
        self.trim(reserve=sum(r.size for r in missing.values()))
        reader = repo.reader()
        written = _Written()
        try:
            remote: list[tuple[Path, FileRecord]] = []
            for path, record in missing.items():
                if not self._copy_local(path, record, written):
                    remote.append((path, record))
            metrics.NODE_CACHE_HITS.inc(len(records) - len(remote))
            metrics.NODE_CACHE_MISSES.inc(len(remote))
            reader.prefetch(r for _, r in remote)

            def fetch(item: tuple[Path, FileRecord]) -> None:
                path, record = item
                name = names.get(id(record))
                self._write(path, record, lambda fd: reader.write_to(record, fd, name), written)

            with ThreadPoolExecutor(concurrency, thread_name_prefix="kvol-cache") as pool:
                list(pool.map(fetch, remote))
        finally:
            reader.release()
            # What was fetched stays, also when another fetch failed: a retry reuses it.
            self._name_durably(written)
        return len(remote)

    def _name_durably(self, written: _Written) -> None:
        """Give entries written under temporary names their names, once their data is on
        disk: an entry that exists is whole, also after a power loss (a lost rename only
        makes it fetched again)."""
        if not written.entries:
            return
        # Not waiting for everything else written to the node's disk, when they are few.
        fsops.sync_changed(
            self.root, [str(tmp.relative_to(self.root)) for tmp, _, _ in written.entries]
        )
        for tmp, path, size in written.entries:
            os.replace(tmp, path)
            self._added(path.name, size)

    def trim(self, reserve: int = 0) -> int:
        """Evict unlinked entries, least recently used first, until the cache plus
        ``reserve`` bytes fits the limit; returns the bytes still over it (0: fits)."""
        if not self.max_bytes:
            return 0
        with self._lock:
            entries = self._ensure_scanned()
            over = self._bytes + reserve - self.max_bytes
            if over <= 0 or not self._dirty:
                return max(over, 0)
            # Each entry is looked at once: one in use goes to the recent end.
            for _ in range(len(entries)):
                if over <= 0:
                    break
                name, size = next(iter(entries.items()))
                if name in self._held:
                    entries.move_to_end(name)
                    continue
                path = self.root / name[:2] / name
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    del entries[name]
                    self._bytes -= size
                    over -= size
                    continue
                if st.st_nlink > 1:
                    entries.move_to_end(name)
                    continue
                path.unlink(missing_ok=True)
                del entries[name]
                self._bytes -= size
                over -= size
                metrics.NODE_CACHE_EVICTIONS.inc()
            else:
                self._dirty = False  # nothing more can go until a snapshot or hold does
            metrics.NODE_CACHE_BYTES.set(self._bytes)
            return max(over, 0)

    def _touch(self, names: list[str]) -> None:
        with self._lock:
            entries = self._ensure_scanned()
            for name in names:
                if name in entries:
                    entries.move_to_end(name)
                else:  # put in place by something this process did not count
                    try:
                        size = os.lstat(self.root / name[:2] / name).st_size
                    except FileNotFoundError:
                        continue
                    entries[name] = size
                    self._bytes += size
            metrics.NODE_CACHE_BYTES.set(self._bytes)

    def _added(self, name: str, size: int) -> None:
        with self._lock:
            entries = self._ensure_scanned()
            if name in entries:
                entries.move_to_end(name)
            else:
                entries[name] = size
                self._bytes += size
            self._dirty = True  # a new entry no build holds may be evicted
            metrics.NODE_CACHE_BYTES.set(self._bytes)

    def _ensure_scanned(self) -> OrderedDict[str, int]:
        """The entries in recency order, read from disk once per process (under the lock)."""
        if self._entries is not None:
            return self._entries
        found: list[tuple[int, str, int]] = []
        stale = time.time() - STALE_TEMP_SECONDS
        for sub in sorted(os.listdir(self.root)):
            if sub == LAZY_STATE_DIR:
                continue  # the lazy filler's manifests, not entries
            directory = self.root / sub
            try:
                names = os.listdir(directory)
            except NotADirectoryError:
                continue
            for name in names:
                try:
                    st = os.lstat(directory / name)
                except FileNotFoundError:
                    continue
                if name.startswith(fsops.TEMP_PREFIX):
                    # Left by a fill that was killed; a live one is younger.
                    if st.st_ctime < stale:
                        (directory / name).unlink(missing_ok=True)
                    continue
                found.append((max(st.st_atime_ns, st.st_ctime_ns), name, st.st_size))
        found.sort()
        self._entries = OrderedDict((name, size) for _, name, size in found)
        self._bytes = sum(size for _, _, size in found)
        metrics.NODE_CACHE_BYTES.set(self._bytes)
        return self._entries

    def _copy_local(self, path: Path, record: FileRecord, written: _Written) -> bool:
        """Another mode or mtime of the same content is here: copy it, no download."""
        try:
            siblings = [p for p in path.parent.iterdir() if p.name.startswith(record.hash + ".")]
        except FileNotFoundError:
            return False
        for sibling in siblings:
            if is_placeholder(sibling):
                continue  # no content yet: the store has it
            try:
                src = os.open(sibling, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                self._write(
                    path, record, functools.partial(_copy_fd, src, size=record.size), written
                )
            finally:
                os.close(src)
            return True
        return False

    def _write(
        self, path: Path, record: FileRecord, fill: Callable[[int], None], written: _Written
    ) -> None:
        """The entry ``path`` written under a temporary name (see :meth:`_name_durably`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{fsops.TEMP_PREFIX}{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fill(fd)
            os.fchmod(fd, fsops.safe_mode(record.mode))
            os.utime(fd, ns=(record.mtime_ns, record.mtime_ns))
            fsops.start_writeback(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        written.add(tmp, path, record.size)


class _Written:
    """Entries of one fill written under temporary names, to be named once on disk."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[tuple[Path, Path, int]] = []

    def add(self, tmp: Path, path: Path, size: int) -> None:
        with self._lock:
            self.entries.append((tmp, path, size))


def _copy_fd(src: int, dst: int, *, size: int) -> None:
    offset = 0
    while offset < size:
        # copy_file_range shares extents where the filesystem can (reflinks on xfs/btrfs).
        n = os.copy_file_range(src, dst, size - offset, offset, offset)
        if n == 0:
            raise CorruptData("cached file is shorter than its record")
        offset += n


def _copy_group_file(src_path: Path, dst: str, record: FileRecord, group: int) -> None:
    src = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _copy_fd(src, fd, size=record.size)
            os.fchown(fd, 0, group)
            os.fchmod(fd, group_mode(record.mode))
            os.utime(fd, ns=(record.mtime_ns, record.mtime_ns))
        finally:
            os.close(fd)
    finally:
        os.close(src)


# -- lower snapshots ----------------------------------------------------------------------

LOWER_TREE = "tree"
LOWER_INDEX = "index"
#: Mode of every directory of a mount group's view: group-writable, and setgid so that
#: what a pod creates inherits the group.
GROUP_DIR_MODE = 0o2775


def group_mode(mode: int) -> int:
    """A file's mode in a mount group's view: its permission bits plus group read and
    write (what the kubelet's recursive fsGroup change would give it)."""
    return fsops.safe_mode(mode) | 0o060


def lower_family(volume_id: str, group: int | None) -> str:
    """The directory of a volume's snapshots on this machine: one for copies without a
    mount group, and one per mount group (its files are that group's own inodes)."""
    return volume_id if group is None else f"{volume_id}.g{group}"


@dataclass(frozen=True)
class Lower:
    """A read-only snapshot of one volume at one seq: the lower layer of its overlays."""

    path: Path
    volume_id: str
    seq: int

    @property
    def tree(self) -> Path:
        return self.path / LOWER_TREE

    @property
    def index_path(self) -> Path:
        return self.path / LOWER_INDEX

    @property
    def key(self) -> str:
        return f"{self.volume_id}/{self.seq}"


class Lowers:
    """The lower snapshots of this machine: ``<root>/<volume id>/<seq>/{tree,index}``.

    A snapshot is built in a temporary directory and renamed into place whole, so one that
    exists is complete. Building hard-links every file from the content cache, which is
    O(files) and never O(bytes) once the cache holds the content.
    """

    def __init__(
        self, root: str | Path, cache: ContentCache, *, images: BlobFiller | None = None
    ) -> None:
        self.root = Path(root)
        self.cache = cache
        #: With a blob filler, a snapshot is an image filled as it is read (lazy fetch:
        #: see kvol/image_lowers.py), not a tree of the cache's entries.
        self.images = images
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        #: Parsed snapshot indexes: a new copy starts from one without parsing it again.
        self._templates: dict[Path, _Template] = {}
        if images is not None:
            self._resume_images()

    def get(self, volume_id: str, seq: int) -> Lower | None:
        lower = Lower(self.root / volume_id / layout.seq_name(seq), volume_id, seq)
        return lower if lower.index_path.exists() else None

    def newest(self, volume_id: str, at_most: int | None = None) -> Lower | None:
        try:
            names = os.listdir(self.root / volume_id)
        except FileNotFoundError:
            return None
        seqs = [s for s in map(layout.parse_seq, names) if s is not None]
        seqs = [s for s in seqs if at_most is None or s <= at_most]
        for seq in sorted(seqs, reverse=True):
            found = self.get(volume_id, seq)
            if found is not None:
                return found
        return None

    def build(
        self, repo: Repo, seq: int, concurrency: int = 8, *, group: int | None = None
    ) -> Lower:
        """The snapshot of ``repo`` at ``seq``, built unless it exists. With ``group``, the
        snapshot of copies published for that mount group (see :meth:`_materialize_for_group`)."""
        family = lower_family(repo.volume_id, group)
        key = f"{family}/{seq}"
        with self._lock:
            gate = self._building.setdefault(key, threading.Lock())
        # One build per snapshot; others wait for it and reuse it. The cache entries
        # stay held until the tree links them. An image snapshot is made from the state
        # alone, a few objects per file and none in a cycle: no collection meanwhile.
        image = self.images is not None and group is None
        with gate, self.cache.holding() as held, gcpause.paused_if(image):
            existing = self.get(family, seq)
            if existing is not None:
                return existing
            state = repo.state(seq)
            lazy = self.cache.lazy is not None and group is None and not image
            if not lazy and not image:
                # A group's snapshot copies its files: lazy entries would be filled now.
                self.cache.fill(repo, state.files, concurrency, held)
            final = self.root / family / layout.seq_name(seq)
            staging = final.with_name(
                f"{fsops.TEMP_PREFIX}{layout.seq_name(seq)}-{secrets.token_hex(4)}"
            )
            tree = staging / LOWER_TREE
            placed: list[Path] = []
            try:
                if image:
                    assert self.images is not None
                    staging.mkdir(parents=True)
                    contents = image_lowers.write(state, staging)
                    self.images.register(repo)
                    image_lowers.attach(
                        staging, tree, repo.volume_id, self.images, lambda: contents
                    )
                elif lazy:
                    # Placeholders are made in the tree itself, then linked into the cache.
                    self._make_dirs(state, tree)
                    placed = self.cache.place(repo, state.files, tree, held)
                elif group is None:
                    self._materialize(state, tree)
                else:
                    self._materialize_for_group(
                        state, tree, group, self.newest(family, at_most=seq)
                    )
                index = Index(repo.volume_id, state.seq)
                index.dirs = state.all_dirs()
                index.explicit_dirs = set(state.dirs)
                # A snapshot's stat is no evidence for a copy (a file left in the lower
                # layer is clean by having nothing in the upper one, and a copied-up file
                # is a new inode): its files carry a signature no stat matches.
                index.files = {
                    rel: IndexEntry(record, UNMATCHED) for rel, record in state.files.items()
                }
                index.save(staging / LOWER_INDEX)
                # Named only once on disk: a snapshot that exists is whole, after a power
                # loss too (a copy made from it must not see files short or missing).
                fsops.sync_filesystem(staging)
                os.rename(staging, final)
                with self._lock:
                    self._templates[final] = _Template.of(index)
            except BaseException:
                self.release_partial(staging)
                shutil.rmtree(staging, ignore_errors=True)
                raise
            if placed and self.cache.lazy is not None and self.cache.prefetch:
                self.cache.lazy.prefetch(placed)
            if image and self.cache.prefetch:
                assert self.images is not None
                self.images.prefetch(final / image_lowers.BLOB)
            return Lower(final, family, seq)

    def release_partial(self, staging: Path) -> None:
        """Unmount the image of a snapshot whose build did not finish, if it has one."""
        if self.images is not None and is_mountpoint(staging / LOWER_TREE):
            image_lowers.detach(staging, staging / LOWER_TREE, self.images)

    def ready(self, lower: Lower) -> None:
        """Make sure an image snapshot is mounted and its blob watched (after the node
        restarted, or a plugin that never had it); other snapshots are always ready."""
        if self.images is not None and image_lowers.is_image(lower.path):

            def contents() -> image_lowers.Contents:
                # A record the index lacks changes the layout: its digest check fails.
                records = self.template(lower).index.committed_state().files
                return image_lowers.contents_of(lower.path, records)

            image_lowers.attach(lower.path, lower.tree, lower.volume_id, self.images, contents)

    def adopt(self, repo: Repo) -> None:
        """What this node still has to fetch for ``repo``'s volume (left by a previous
        process) may be fetched from it."""
        self.cache.adopt(repo)
        if self.images is not None:
            self.images.register(repo)

    def close(self, *, release: bool = True) -> None:
        """Stop fetching lazily. Without ``release`` the fanotify groups live on: reads of
        what is not fetched yet wait for the next process (see kvol/fangroup.py)."""
        self.cache.close(release=release)
        if self.images is not None:
            self.images.stop(release=release)

    def _resume_images(self) -> None:
        """Watch every image snapshot's blob again before anything reads it, then let
        reads of blobs nobody has any more fail (they were being removed)."""
        assert self.images is not None
        for lower in self.all():
            if image_lowers.is_image(lower.path):
                try:
                    self.ready(lower)
                except CorruptData as exc:
                    # Not usable (laid out by an older version, or damaged): dropped, to be
                    # made again when next needed, unless a pod's overlay still sits on it.
                    log.error("snapshot %s is not usable and is dropped: %s", lower.path, exc)
                    try:
                        self.drop(lower)
                    except (KvolError, OSError) as kept:
                        log.error("snapshot %s is kept: %s", lower.path, kept)
                    continue
                except (KvolError, OSError) as exc:
                    log.error("snapshot %s could not be mounted again: %s", lower.path, exc)
                    continue
                if self.cache.prefetch:  # what the previous process had left to fetch
                    self.images.prefetch(lower.path / image_lowers.BLOB)
        self.images.settle()

    @staticmethod
    def _make_dirs(state: State, tree: Path) -> None:
        tree.mkdir(parents=True)
        base = str(tree)
        for d in sorted(state.all_dirs()):
            os.makedirs(os.path.join(base, d), exist_ok=True)

    def _materialize(self, state: State, tree: Path) -> None:
        self._make_dirs(state, tree)
        base = str(tree)
        for rel, record in state.files.items():
            os.link(self.cache.path(record), os.path.join(base, rel))

    def _materialize_for_group(
        self, state: State, tree: Path, group: int, previous: Lower | None
    ) -> None:
        """A snapshot a member of ``group`` can edit: directories root:group 2775, files
        root:group with group read and write added (overlayfs checks a write against the
        lower file before it copies it up, so the lower file must allow it).

        The cache's inodes are root:root with the committed modes and every hard link
        shares them, so these files are this group's own: linked from the group's previous
        snapshot where the record is the same, else copied from the cache (a reflink where
        the filesystem shares extents). Built once per seq and group; publishing a copy on
        it stays a mount."""
        tree.mkdir(parents=True)
        base = str(tree)
        for d in ["", *sorted(state.all_dirs())]:
            path = os.path.join(base, d) if d else base
            os.makedirs(path, exist_ok=True)
            os.chown(path, 0, group)
            os.chmod(path, GROUP_DIR_MODE)
        known = self.template(previous).index.files if previous is not None else {}
        for rel, record in state.files.items():
            dst = os.path.join(base, rel)
            entry = known.get(rel)
            if entry is not None and previous is not None and entry.record == record:
                try:
                    os.link(os.path.join(previous.tree, rel), dst)
                    continue
                except FileNotFoundError:
                    pass  # that snapshot is being dropped: copy instead
            _copy_group_file(self.cache.path(record), dst, record, group)

    def template(self, lower: Lower) -> _Template:
        """The snapshot's index, parsed once per process (snapshots never change)."""
        with self._lock:
            cached = self._templates.get(lower.path)
        if cached is None:
            cached = _Template.of(Index.load(lower.index_path))
            with self._lock:
                self._templates[lower.path] = cached
        return cached

    def all(self) -> list[Lower]:
        found = []
        for vdir in sorted(self.root.iterdir()) if self.root.exists() else []:
            for name in sorted(os.listdir(vdir)):
                seq = layout.parse_seq(name)
                if seq is not None and (vdir / name / LOWER_INDEX).exists():
                    found.append(Lower(vdir / name, vdir.name, seq))
        return found

    def drop(self, lower: Lower) -> None:
        """Remove a snapshot no mount uses (the caller checks); refuses a mounted one, or
        one an overlay still sits on (removing it would take the files from under a copy,
        whose next commit would publish them as deleted)."""
        doomed = self.detach(lower)
        if doomed is not None:
            self.discard(doomed)

    def detach(self, lower: Lower) -> Path | None:
        """The first, quick half of :meth:`drop`: the snapshot is renamed aside (no
        publish finds it from then on); returns where, for :meth:`discard`."""
        image = self.images is not None and image_lowers.is_image(lower.path)
        own = {os.path.realpath(lower.tree)} if image else set()
        if set(mounts_under(lower.path)) - own or overlays_on(lower.tree):
            raise MountError(f"snapshot {lower.path} is still mounted")
        if image and is_mountpoint(lower.tree):
            assert self.images is not None
            image_lowers.detach(lower.path, lower.tree, self.images)
        with self._lock:
            self._templates.pop(lower.path, None)
        # Renamed first so that a half-removed snapshot never looks complete.
        doomed = lower.path.with_name(f"{fsops.TEMP_PREFIX}drop-{secrets.token_hex(4)}")
        try:
            os.rename(lower.path, doomed)
        except FileNotFoundError:
            return None
        return doomed

    def discard(self, doomed: Path) -> None:
        """The slow half of :meth:`drop`: remove a detached snapshot's tree."""
        shutil.rmtree(doomed)
        self.cache.released()  # what it linked may be evicted now


@dataclass(frozen=True)
class _Template:
    """A snapshot's parsed index, shared read-only by the copies made from it."""

    index: Index
    files: frozenset[str]
    dirs: frozenset[str]

    @classmethod
    def of(cls, index: Index) -> _Template:
        return cls(index, frozenset(index.files), frozenset(index.dirs))


# -- the copy-on-write working copy ---------------------------------------------------------

UPPER = "upper"
WORK = "work"
MERGED = "merged"
META = "meta"
OPAQUE_XATTR = "trusted.overlay.opaque"


class OverlayWorkingCopy(WorkingCopy):
    """A working copy whose root is an overlay of a private upper layer on a shared lower
    snapshot. Publishing is a mount; finding changes walks only the upper layer."""

    upper: Path
    lower: Lower
    lower_files: frozenset[str]
    lower_dirs: frozenset[str]
    #: Paths never committed (mount points of control sockets inside the copy).
    excluded: frozenset[str]
    #: The mount group whose members write this view (None: root's view, as committed).
    group: int | None = None

    @classmethod
    def mount(
        cls,
        repo: Repo,
        lowers: Lowers,
        lower: Lower,
        layer_dir: str | Path,
        *,
        read_only: bool = False,
        excluded: frozenset[str] = frozenset(),
        concurrency: int = DEFAULT_CONCURRENCY,
        group: int | None = None,
    ) -> OverlayWorkingCopy:
        """Mount (or re-adopt) the copy kept in ``layer_dir`` over ``lower``.

        A new copy starts from the snapshot's index; an existing one (the plugin restarted)
        keeps its own index and upper layer, and is mounted again if it is not mounted.
        With ``group`` (a mount group, over a snapshot built for it) the root of the view
        is root:group 2775, so the group's members create files there: no file is walked.
        """
        base = Path(layer_dir).absolute()
        upper, work, merged, meta = (base / n for n in (UPPER, WORK, MERGED, META))
        for d in (upper, work, merged, meta):
            d.mkdir(parents=True, exist_ok=True)
        config_path = meta / CONFIG_FILE
        if config_path.exists():
            config = json.loads(config_path.read_text())
            if config.get("volume_id") != repo.volume_id or config.get("lower") != str(lower.path):
                raise CorruptData(f"{base} holds another working copy")
            index = Index.load(meta / INDEX_FILE)
        else:
            if group is not None:
                # The view's root is the upper layer's root directory.
                os.chown(upper, 0, group)
                os.chmod(upper, GROUP_DIR_MODE)
            # A private index: records and signatures are immutable values and are
            # shared; the entries holding them are the copy's own.
            # The same bytes as the snapshot's index: copied, not encoded again (and the
            # copy's first saves are deltas against it).
            with gcpause.paused():  # an entry per file, none in a cycle
                snapshot_index = lowers.template(lower).index
                index = snapshot_index.copy_saved_at(meta / INDEX_FILE, saved_at=lower.index_path)
            config = {
                "format": 1,
                "layout": "overlay",
                "store": repo.store.url,
                "volume_id": repo.volume_id,
                "read_only": read_only,
                "lower": str(lower.path),
                "upper": str(upper),
            }
            fsops_write_json(config_path, config)
        if not is_mountpoint(merged):
            lowers.ready(lower)
            mount_overlay(lower.tree, upper, work, merged)
        wc = cls(repo, merged, meta, index, read_only=read_only, concurrency=concurrency)
        wc.upper = upper
        wc.lower = lower
        template = lowers.template(lower)
        wc.lower_files, wc.lower_dirs = template.files, template.dirs
        wc.excluded = excluded
        wc.group = group
        # Pods see this mount through bind mounts in their own namespaces: find their
        # open files by device, not by path.
        wc.busy_device = os.stat(merged).st_dev
        # As WorkingCopy.open does: a re-adopted copy settles a reload killed midway now.
        wc._settle_stopped_reload()
        return wc

    def unmount(self) -> None:
        unmount(self.root)

    # -- a mount group's view ----------------------------------------------------------------

    def _view_mode(self, mode: int) -> int:
        # Files a reload writes look like the snapshot's: writable by the group.
        return fsops.safe_mode(mode) if self.group is None else group_mode(mode)

    def reload(self) -> ReloadResult:
        result = super().reload()
        if self.group is not None:
            self._open_new_dirs_to_group(self.group)
        return result

    def _open_new_dirs_to_group(self, group: int) -> None:
        """Directories a reload made (root's, of the group by their setgid parent) made
        writable by the group like the snapshot's. Only the upper layer can hold new ones:
        it is walked, never the volume; what a pod made keeps the modes it gave it."""
        root_fd = fsops.open_root(str(self.root))
        try:
            stack = [(str(self.upper), "")]
            while stack:
                directory, prefix = stack.pop()
                try:
                    entries = [e for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
                except (FileNotFoundError, NotADirectoryError):
                    continue
                for entry in entries:
                    rel = prefix + entry.name
                    if rel in self.excluded or (not prefix and entry.name == paths.RESERVED):
                        continue
                    stack.append((entry.path, rel + "/"))
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if st.st_uid != 0 or st.st_gid != group:
                        continue
                    if stat.S_IMODE(st.st_mode) == GROUP_DIR_MODE:
                        continue
                    try:
                        # Through the mounted view, never into the layer while mounted.
                        fd = fsops.open_dir(root_fd, rel)
                    except (FileNotFoundError, NotADirectoryError):
                        continue
                    try:
                        os.fchmod(fd, GROUP_DIR_MODE)
                    finally:
                        os.close(fd)
        finally:
            os.close(root_fd)

    # -- change detection: the upper layer only ------------------------------------------

    def _scan(self) -> ScanResult:
        result = ScanResult()
        index = self.index
        files = index.files
        seen_files: set[str] = set()
        seen_dirs: set[str] = set()
        opaque: list[str] = []
        merged = str(self.root)
        stack = [(str(self.upper), "")]
        while stack:
            directory, prefix = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                name = entry.name
                rel = prefix + name
                if name.startswith(fsops.TEMP_PREFIX) or rel in self.excluded:
                    continue
                if not prefix and name == paths.RESERVED:
                    continue
                try:
                    st_upper = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                mode = st_upper.st_mode
                if stat.S_ISCHR(mode) and st_upper.st_rdev == 0:
                    # A whiteout: whatever the lower layer had here is deleted.
                    if rel in files:
                        result.deleted.add(rel)
                    if rel in index.dirs:
                        result.dirs_removed.add(rel)
                    continue
                if rel in files and not stat.S_ISREG(mode):
                    result.deleted.add(rel)  # a file replaced by a directory or a symlink
                if stat.S_ISDIR(mode):
                    seen_dirs.add(rel)
                    if rel not in index.dirs:
                        result.dirs_added.add(rel)
                    if _is_opaque(entry.path):
                        opaque.append(rel)
                    stack.append((entry.path, rel + "/"))
                    continue
                if rel in index.dirs:
                    result.dirs_removed.add(rel)  # a directory replaced by a file
                if not stat.S_ISREG(mode):
                    continue
                seen_files.add(rel)
                try:
                    # Stat through the mount, as reloads record it, so signatures agree.
                    st = os.lstat(os.path.join(merged, rel))
                except FileNotFoundError:
                    continue
                known = files.get(rel)
                if known is None or not known.is_clean(st):
                    result.candidates[rel] = st
        # Files that never were in the lower layer live only in the upper one: when they
        # are deleted no whiteout is left, so their absence is the deletion.
        for rel in files:
            if rel not in seen_files and rel not in self.lower_files and rel not in result.deleted:
                result.deleted.add(rel)
        # An opaque directory hides everything the lower layer had below it, and a
        # directory whited out or replaced by a file takes everything below it along: the
        # deletion names each file and directory this copy saw there, never the tree, so
        # whatever another writer added under it meanwhile survives the commit.
        for rel in [*opaque, *result.dirs_removed]:
            prefix = rel + "/"
            for p in files:
                if p.startswith(prefix) and p not in seen_files:
                    result.deleted.add(p)
            for d in index.dirs:
                if d.startswith(prefix) and d not in seen_dirs:
                    result.dirs_removed.add(d)
        for d in index.dirs:
            # An upper-only directory that was removed leaves no whiteout either.
            if (
                d not in seen_dirs
                and d not in self.lower_dirs
                and d not in result.dirs_removed
                and not os.path.isdir(os.path.join(merged, d))
            ):
                result.dirs_removed.add(d)
        return result

    def _is_clean(self, root_fd: int, rel: str, entry: IndexEntry, st: os.stat_result) -> bool:
        # A file with nothing in the upper layer is the lower snapshot's, untouched: the
        # shared inode's ctime moves when other snapshots link it, so its stat proves nothing.
        if entry.record is not None and not os.path.lexists(os.path.join(self.upper, rel)):
            return True
        return super()._is_clean(root_fd, rel, entry, st)


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def fsops_write_json(path: Path, data: dict[str, Any]) -> None:
    fsops.write_atomically(path, (json.dumps(data, indent=2) + "\n").encode())
