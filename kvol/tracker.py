"""Change tracking for a plain working copy held open: inotify instead of a stat per file.

A plain copy finds its changes by comparing every file's stat with the index, which costs
one ``lstat`` per file at every commit, changed or not. A process that holds a copy open
(autocommit, the node plugin) can instead watch every directory of the copy with inotify
and look only at the paths something happened to. :class:`ChangeTracker` does that and
gives the copy's scan the same answer a full scan would, by looking at:

- every path an event named since the last scan (created, written, truncated, chmod'ed,
  touched, renamed in or out, deleted);
- every path the last scan reported (a change a commit deferred or failed to publish, a
  file to hash again because it was written within the racy window, a special file): those
  keep being reported until they are settled, as a full scan would;
- every file with more than one link, since a write through another of its names raises
  no event here;
- directories created or deleted since, walked whole (their files are new, or gone).

Whenever the events may not tell everything, the next scan is a full one, and the watches
are set up again first: the first scan (nothing was watched before: a restarted process
starts here), a full event queue (``IN_Q_OVERFLOW``), a directory renamed into, inside or
out of the copy, a watched directory that went away unexpectedly, a new file with several
links, an index replaced (another process committed or reloaded), a reload of this copy
(it records its writes in the index), and every ``full_scan_seconds`` as a safety net
against writes inotify never reports (through a shared memory map, or through a hard link
made from outside the copy since the last full scan). A watch that cannot be added (the
``fs.inotify.max_user_watches`` limit, a directory that cannot be read) turns tracking off
for good: every scan is a full one.

Watches are added before the tree is read (and a new directory is watched before it is
listed), so a change made while the watches are being set up is either seen by the scan
that follows or raises an event for the next one; events are read only when a scan starts,
so an idle copy costs no CPU between scans.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from kvol import fsops, paths
from kvol.index import Index, packed_sig

if TYPE_CHECKING:
    from kvol.workcopy import ScanResult

log = logging.getLogger(__name__)

#: The safety net: a full scan at least this often (seconds).
DEFAULT_FULL_SCAN_SECONDS = 600.0
#: inotify instances and watches are limited per user and shared with every other program
#: of that user on the machine (the kubelet, on a node): this process tracks at most this
#: many copies, and a copy needing more than this share of the watch limit is not tracked.
MAX_TRACKED_COPIES = 32
WATCH_SHARE = 0.25

# From <sys/inotify.h>.
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: What each directory is watched for. IN_CLOSE_WRITE as well as IN_MODIFY: a file written
#: through a memory map raises no IN_MODIFY, but its closing descriptor does raise this.
WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_EXCL_UNLINK
)
_EVENT = struct.Struct("iIII")
#: Up to this many paths to look at, a scan looks at each alone even in a small copy.
_FEW_PATHS = 1000
_READ_SIZE = 64 * 1024


class _WatchFailed(Exception):
    """A directory could not be watched: events can no longer tell every change."""


class TrackingUnavailable(OSError):
    """inotify cannot be used here (no such system call, or the per-user limit of
    inotify instances is reached): the copy scans every file instead."""


class _Inotify:
    """The few inotify calls, through ctypes (the standard library has no binding)."""

    _open = 0
    _open_lock = threading.Lock()

    def __init__(self) -> None:
        self.fd = -1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._add = libc.inotify_add_watch
            self._rm = libc.inotify_rm_watch
            init = libc.inotify_init1
        except (OSError, AttributeError) as exc:
            raise TrackingUnavailable(errno.ENOSYS, "inotify is not available here") from exc
        if not os.path.isdir("/proc/self/fd"):
            raise TrackingUnavailable(errno.ENOENT, "/proc is not mounted")
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        self._rm.restype = ctypes.c_int
        init.argtypes = [ctypes.c_int]
        init.restype = ctypes.c_int
        with _Inotify._open_lock:
            if _Inotify._open >= MAX_TRACKED_COPIES:
                raise TrackingUnavailable(
                    errno.EMFILE, f"this process tracks {MAX_TRACKED_COPIES} copies already"
                )
            fd = init(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                code = ctypes.get_errno()
                raise TrackingUnavailable(code, f"inotify_init1: {os.strerror(code)}")
            self.fd = fd
            _Inotify._open += 1
        self.max_watches = _watch_limit()

    def watch_fd(self, dir_fd: int) -> int:
        """Watch the directory open as ``dir_fd`` (through /proc, so the directory watched
        is the one opened, whatever was renamed meanwhile). Returns its watch descriptor;
        the same directory watched twice keeps its descriptor."""
        wd = int(self._add(self.fd, f"/proc/self/fd/{dir_fd}".encode(), WATCH_MASK))
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return wd

    def unwatch(self, wd: int) -> None:
        self._rm(self.fd, wd)  # EINVAL when already gone: nothing to do

    def read(self) -> list[tuple[int, int, bytes]]:
        """Every queued event as (watch descriptor, mask, name); never blocks."""
        events: list[tuple[int, int, bytes]] = []
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return events
            at = 0
            while at + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, at)
                at += _EVENT.size
                name = data[at : at + length].rstrip(b"\x00")
                at += length
                events.append((wd, mask, name))
            if len(data) < _READ_SIZE - 4096:
                return events  # a short read: the queue is empty (saves a system call)

    def close(self) -> None:
        with _Inotify._open_lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
                _Inotify._open -= 1

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit, modules may be gone
            self.close()


class ChangeTracker:
    """Finds a plain working copy's changes from inotify events (see the module's doc).

    :meth:`scan` is called by the copy under its lock, with the full scan to fall back
    on; it returns what that full scan would. Thread-safe: :meth:`close` may come from
    another thread.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        full_scan_seconds: float = DEFAULT_FULL_SCAN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = Path(root)
        self.full_scan_seconds = full_scan_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._inotify: _Inotify | None = _Inotify()
        #: Watch descriptor -> directory ("" is the root).
        self._wd_path: dict[int, str] = {}
        #: Directories of the tree as of the last scan, plus what events said since.
        self._dirs: set[str] = set()
        #: Paths events named since the last scan.
        self._dirty: set[str] = set()
        #: Directories created or deleted since the last scan: walked whole.
        self._subtrees: set[str] = set()
        #: Paths the last scan reported: looked at again until they are settled.
        self._carry: set[str] = set()
        #: Files with more than one link: a write through another name raises no event.
        self._linked: set[str] = set()
        #: Why the next scan must be a full one (None: events tell everything).
        self._full_reason: str | None = "first scan"
        self._last_full = 0.0
        self._index: weakref.ref[Index] | None = None
        #: Scans of each kind, and why the last full one was full (for tests and tuning).
        self.full_scans = 0
        self.tracked_scans = 0
        self.last_full_reason = ""

    # -- the copy's side ---------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._inotify is not None

    def request_full_scan(self, reason: str) -> None:
        """Make the next scan a full one (something changed that events do not show)."""
        with self._lock:
            self._full_reason = self._full_reason or reason

    def scan(self, index: Index, full_scan: Callable[[], ScanResult]) -> ScanResult:
        """What changed in the tree against ``index``: exactly what ``full_scan`` would
        find, looking only where something happened when the events allow."""
        with self._lock:
            if self._inotify is None:
                return full_scan()
            try:
                self._take_events()
                reason = self._full_reason
                if reason is None and (self._index is None or self._index() is not index):
                    reason = "the index was replaced"
                if reason is None and self._clock() - self._last_full >= self.full_scan_seconds:
                    reason = "periodic full scan"
                if reason is None:
                    result = self._tracked_scan(index)
                    if self._full_reason is None:
                        self.tracked_scans += 1
                        return result
                    reason = self._full_reason  # it found something events cannot follow
                return self._full_scan(index, full_scan, reason)
            except _WatchFailed as exc:
                self._give_up(str(exc))
                return full_scan()
            except BaseException:
                # Events taken but not yet looked at: only a full scan covers them now.
                self._full_reason = self._full_reason or "the last scan failed"
                raise

    def close(self) -> None:
        with self._lock:
            if self._inotify is not None:
                self._inotify.close()
                self._inotify = None
            self._wd_path.clear()

    # -- full scans -------------------------------------------------------------------------

    def _full_scan(
        self, index: Index, full_scan: Callable[[], ScanResult], reason: str
    ) -> ScanResult:
        inotify = self._inotify
        assert inotify is not None
        # Events queued so far are covered by what follows; later ones are kept. Watches
        # first, then the scan: a change in between is seen by one or the other.
        inotify.read()
        self._clear()
        old = set(self._wd_path)
        self._wd_path = {}
        self._watch_tree()
        for wd in old - set(self._wd_path):
            inotify.unwatch(wd)  # a directory no longer in the tree (moved out)
        result = full_scan()
        self._dirs = (index.dirs - result.dirs_removed) | result.dirs_added
        self._carry = _reported(result)
        self._linked = set(result.linked)
        self._index = weakref.ref(index)
        self._last_full = self._clock()
        self._full_reason = None
        self.full_scans += 1
        self.last_full_reason = reason
        log.debug("full scan of %s: %s", self.root, reason)
        return result

    def _watch_tree(self) -> None:
        root_fd = fsops.open_root(str(self.root))
        try:
            self._watch_walk(root_fd, "", None)
        finally:
            os.close(root_fd)

    def _watch_walk(
        self, root_fd: int, top: str, visit: Callable[[str, os.DirEntry[str]], None] | None
    ) -> None:
        """Watch ``top`` and every directory under it (each before it is listed), adding
        them to the known directories; ``visit`` sees every other entry."""
        assert self._inotify is not None
        stack = [top]
        while stack:
            rel = stack.pop()
            try:
                dir_fd = fsops.open_dir(root_fd, rel)
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone (or replaced) meanwhile: its parent's event says so
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                continue  # replaced by a symlink meanwhile
            try:
                try:
                    wd = self._inotify.watch_fd(dir_fd)
                except FileNotFoundError as exc:
                    if not rel:
                        raise _WatchFailed(f"cannot watch the copy's root: {exc}") from exc
                    continue  # removed since it was opened: its parent's event says so
                except OSError as exc:
                    hint = (
                        " (raise the fs.inotify.max_user_watches limit)"
                        if exc.errno == errno.ENOSPC
                        else ""
                    )
                    raise _WatchFailed(f"cannot watch {rel or '/'}: {exc}{hint}") from exc
                self._wd_path[wd] = rel
                if len(self._wd_path) > self._inotify.max_watches:
                    raise _WatchFailed(
                        f"it has over {self._inotify.max_watches:,} directories, more than "
                        f"{WATCH_SHARE:.0%} of fs.inotify.max_user_watches"
                    )
                if rel:
                    self._dirs.add(rel)
                prefix = rel + "/" if rel else ""
                with os.scandir(dir_fd) as entries:
                    for entry in entries:
                        name = entry.name
                        if name.startswith(fsops.TEMP_PREFIX) or (
                            not prefix and name == paths.RESERVED
                        ):
                            continue
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(prefix + name)
                        elif visit is not None:
                            visit(prefix + name, entry)
            finally:
                os.close(dir_fd)

    def _give_up(self, why: str) -> None:
        log.warning(
            "change tracking of %s is off, every commit scans every file: %s", self.root, why
        )
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._wd_path.clear()

    # -- events -----------------------------------------------------------------------------

    def _take_events(self) -> None:
        assert self._inotify is not None
        for wd, mask, raw in self._inotify.read():
            if mask & IN_Q_OVERFLOW:
                self._full_reason = self._full_reason or "the event queue overflowed"
                continue
            where = self._wd_path.get(wd)
            if where is None:
                continue  # a watch dropped by the last full scan: outside the tree
            if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT):
                if mask & IN_IGNORED:
                    del self._wd_path[wd]
                if not where or mask & (IN_MOVE_SELF | IN_UNMOUNT):
                    self._full_reason = self._full_reason or "a watched directory went away"
                else:
                    self._subtrees.add(where)  # deleted: its files are gone
                continue
            name = os.fsdecode(raw)
            if not name:
                continue  # about the watched directory itself (its mode, say): not tracked
            if name.startswith(fsops.TEMP_PREFIX) or (not where and name == paths.RESERVED):
                continue
            rel = f"{where}/{name}" if where else name
            if mask & IN_ISDIR:
                if mask & (IN_MOVED_FROM | IN_MOVED_TO):
                    self._full_reason = self._full_reason or "a directory was renamed"
                elif mask & (IN_CREATE | IN_DELETE):
                    self._subtrees.add(rel)
                continue
            self._dirty.add(rel)

    def _clear(self) -> None:
        self._dirty.clear()
        self._subtrees.clear()
        self._carry.clear()

    # -- tracked scans ----------------------------------------------------------------------

    def _tracked_scan(self, index: Index) -> ScanResult:
        from kvol.workcopy import ScanResult

        result = ScanResult()
        files = index.paths()
        tops = _outermost(self._subtrees)
        paths_to_check = self._dirty | self._carry | self._linked
        if not tops and not paths_to_check and self._dirs == index.dirs:
            self._carry = set()
            return result  # nothing happened: the common case, kept cheap
        if len(paths_to_check) > max(len(files) // 2, _FEW_PATHS):
            # A path looked at alone costs more than one a walk passes: walk them all.
            self._full_reason = "most files to look at"
            return result
        root_fd = fsops.open_root(str(self.root))
        try:
            if tops:
                self._walk_subtrees(root_fd, index, tops, result)
                prefixes = tuple(t + "/" for t in tops)
                paths_to_check = {p for p in paths_to_check if not p.startswith(prefixes)}
                paths_to_check.update(tops)  # each may be a file now
            self._check_all(root_fd, sorted(paths_to_check), index, result)
        finally:
            os.close(root_fd)
        result.dirs_added = self._dirs - index.dirs
        result.dirs_removed = index.dirs - self._dirs
        if result.dirs_removed:
            # A file under a directory that is gone was not seen by a full scan either
            # (those under a deleted directory the walk above named already).
            prefixes = tuple(d + "/" for d in result.dirs_removed)
            result.deleted.update(p for p in files if p.startswith(prefixes))
        self._dirty = set()
        self._subtrees = set()
        self._carry = _reported(result)
        return result

    def _walk_subtrees(
        self, root_fd: int, index: Index, tops: set[str], result: ScanResult
    ) -> None:
        """Directories created or deleted: their files are all new, or all gone."""
        files = index.paths()
        prefixes = tuple(t + "/" for t in tops)
        # What the tree had under them: known again only by walking them now.
        self._dirs = {d for d in self._dirs if d not in tops and not d.startswith(prefixes)}
        seen: set[str] = set()

        def visit(rel: str, entry: os.DirEntry[str]) -> None:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                return
            if self._classify(rel, st, index, result):
                seen.add(rel)

        for top in tops:
            if not _hidden(top):
                self._watch_walk(root_fd, top, visit)
        result.deleted.update(p for p in files if p.startswith(prefixes) and p not in seen)

    def _check_all(self, root_fd: int, rels: list[str], index: Index, result: ScanResult) -> None:
        """Each path, as a full scan would see it. Sorted, so that the paths of one
        directory come together and it is opened (without symlinks) once for them."""
        head: str | None = None
        dir_fd: int | None = None
        try:
            for rel in rels:
                parent, _, name = rel.rpartition("/")
                if parent != head:
                    if dir_fd is not None:
                        os.close(dir_fd)
                    head, dir_fd = parent, _open_dir_or_none(root_fd, parent)
                st = None
                if dir_fd is not None and not _hidden(rel):
                    with contextlib.suppress(FileNotFoundError):
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                self._check(rel, st, index, result)
        finally:
            if dir_fd is not None:
                os.close(dir_fd)

    def _check(self, rel: str, st: os.stat_result | None, index: Index, result: ScanResult) -> None:
        """One path found with ``st`` (None: not there)."""
        if st is None or stat.S_ISDIR(st.st_mode):
            if index.holds(rel):
                result.deleted.add(rel)
            self._linked.discard(rel)
            return
        if not self._classify(rel, st, index, result) and index.holds(rel):
            result.deleted.add(rel)

    def _classify(self, rel: str, st: os.stat_result, index: Index, result: ScanResult) -> bool:
        """File or special file ``rel`` found with ``st``: a candidate, skipped, or clean.
        Returns whether it is a regular file (a file of the index not regular is deleted)."""
        if not stat.S_ISREG(st.st_mode):
            result.skipped.add(rel)
            self._linked.discard(rel)
            return False
        if st.st_nlink > 1:
            if rel not in self._linked:
                # Its other names may be files of the copy that a write through this one
                # changes without an event: a full scan finds them all.
                self._full_reason = self._full_reason or "a file with several links"
                self._linked.add(rel)
        else:
            self._linked.discard(rel)
        known = index.entry(rel)
        if (
            known is None
            or known.racy
            or known.stat_key
            != (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_mode & 0o7777)
        ):
            result.candidates[rel] = packed_sig(st)
        return True


def _open_dir_or_none(root_fd: int, rel: str) -> int | None:
    """Directory ``rel`` opened without following symlinks, or None where there is none."""
    try:
        return fsops.open_dir(root_fd, rel)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        return None  # a symlink: a full scan never goes through one either


def _watch_limit() -> int:
    """The watches one copy may take (see WATCH_SHARE)."""
    try:
        limit = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    except (OSError, ValueError):
        limit = 8192  # the kernel's default before it scaled with memory
    return max(1, int(limit * WATCH_SHARE))


def _reported(result: ScanResult) -> set[str]:
    reported = set(result.candidates)
    reported.update(result.deleted)
    reported.update(result.skipped)
    return reported


def _hidden(rel: str) -> bool:
    """A path a full scan never looks at (the reserved directory, a temporary name)."""
    parts = rel.split("/")
    return parts[0] == paths.RESERVED or any(p.startswith(fsops.TEMP_PREFIX) for p in parts)


def _outermost(dirs: Iterable[str]) -> set[str]:
    found = set(dirs)
    return {d for d in found if not any(a in found for a in paths.ancestors(d))}
