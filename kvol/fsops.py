"""File operations inside a working copy that never follow a symlink out of it.

The tree of a working copy is writable by whoever uses it (a pod), so every path is
walked one component at a time from a descriptor of the root with ``O_NOFOLLOW``: a
directory swapped for a symlink mid-way makes the operation fail instead of reading or
writing outside the root.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Collection, Iterable
from contextlib import AbstractContextManager
from pathlib import Path

from kvol import paths
from kvol.errors import InvalidPath

#: Temporary files of in-progress writes carry this prefix; scans never report them.
TEMP_PREFIX = ".kvol-tmp-"
#: O_NONBLOCK: something swapped in for a directory (a FIFO) never blocks the open.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_root(root: str) -> int:
    return os.open(root, DIR_FLAGS)


def open_dir(root_fd: int, rel_dir: str, *, create: bool = False, mode: int = 0o755) -> int:
    """A descriptor of directory ``rel_dir`` ("" is the root), walked without symlinks.

    With ``create``, missing directories are made (with ``mode``, less the umask).
    Making them is idempotent and safe against a race with another thread or process
    making the same directory (both succeed). Nothing that stands where a directory must be is ever removed: a file there
    (which may be an uncommitted change) makes this raise NotADirectoryError, and a
    symlink InvalidPath. Callers decide what such a path means.
    """
    fd = os.dup(root_fd)
    if not rel_dir:
        return fd
    try:
        for name in rel_dir.split("/"):
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # made meanwhile by another writer
                    os.mkdir(name, mode, dir_fd=fd)
                child = _open_made_dir(fd, name, rel_dir)
            except OSError as exc:
                if create and exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    # O_NOFOLLOW | O_DIRECTORY on a symlink fails with either.
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        raise InvalidPath(f"{rel_dir!r} passes through a symlink") from exc
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_made_dir(parent_fd: int, name: str, rel_dir: str) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidPath(f"{rel_dir!r} passes through a symlink") from exc
        raise


def _split(rel_path: str) -> tuple[str, str]:
    head, _, name = rel_path.rpartition("/")
    return head, name


def open_file(root_fd: int, rel_path: str) -> int:
    """Open a regular file for reading; refuses symlinks anywhere on the path."""
    head, name = _split(rel_path)
    dfd = open_dir(root_fd, head)
    try:
        fd = open_regular_at(dfd, name, rel_path)
    finally:
        os.close(dfd)
    return fd


#: Opening never blocks (a FIFO put where a file was would wait for a writer forever)
#: and never follows a symlink; the type is checked on the descriptor before any read.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotRegularFile(IsADirectoryError):
    """A path that is not a regular file (a directory, FIFO, socket or device) was opened
    to be read; it is skipped, never read."""


def open_regular_at(dir_fd: int, name: str, rel_path: str) -> int:
    """Open a regular file for reading without blocking; anything else raises
    :class:`NotRegularFile` (or the OSError of the open, e.g. ELOOP for a symlink)."""
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket, or a FIFO without a writer on some systems
            raise NotRegularFile(errno.EISDIR, "not a regular file", rel_path) from exc
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(errno.EISDIR, "not a regular file", rel_path)
        # Regular files ignore O_NONBLOCK, but clear it so readers see plain semantics.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_up_to(fd: int, limit: int) -> bytes:
    """Read from ``fd`` until its end or ``limit`` bytes (reads may come back short)."""
    pieces: list[bytes] = []
    left = limit
    while left > 0:
        piece = os.read(fd, left)
        if not piece:
            break
        pieces.append(piece)
        left -= len(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def lstat(root_fd: int, rel_path: str) -> os.stat_result | None:
    """lstat of a path inside the root, or None if it (or a parent) does not exist."""
    head, name = _split(rel_path)
    try:
        dfd = open_dir(root_fd, head)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        os.close(dfd)


def write_file(
    root_fd: int,
    rel_path: str,
    fill: Callable[[int], None],
    *,
    mode: int,
    mtime_ns: int,
) -> os.stat_result:
    """Replace ``rel_path`` atomically with what ``fill(fd)`` writes; returns its stat.

    An empty directory standing at ``rel_path`` is removed first (the volume says a file
    is there now); a directory with anything in it is never removed (OSError ENOTEMPTY).
    Readers of the old file keep their open copy. Only the permission bits of ``mode``
    are applied (see :func:`safe_mode`).
    """
    head, name = _split(rel_path)
    dfd = open_dir(root_fd, head, create=True)
    try:
        tmp = TEMP_PREFIX + secrets.token_hex(8)
        fd = _new_file(dfd, tmp, fill, mode=mode, mtime_ns=mtime_ns)
        try:
            try:
                _make_way(dfd, name)
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                os.unlink(tmp, dir_fd=dfd)
                raise
            # After the rename, which changes the ctime the index compares.
            return os.fstat(fd)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


#: What identifies a staged file until it is in place: device, inode, size, mtime.
Staged = tuple[int, int, int, int]


def stage_file(
    dir_fd: int,
    name: str,
    fill: Callable[[int], None],
    *,
    mode: int,
    mtime_ns: int,
    creating: AbstractContextManager[object] | None = None,
) -> Staged:
    """Write a new file ``name`` in ``dir_fd`` with what ``fill(fd)`` writes, to be moved
    into place later by :func:`install_file`; nothing is left if ``fill`` fails.

    ``creating`` is held while the file is created (not while it is filled): threads
    staging into one directory take turns there, where the kernel serializes them anyway
    (and may spin while it does)."""
    with creating or contextlib.nullcontext():
        fd = _create(dir_fd, name)
    fd = _fill_new(fd, dir_fd, name, fill, mode=mode, mtime_ns=mtime_ns)
    try:
        return _identity(os.fstat(fd))
    finally:
        os.close(fd)


class ChangedMeanwhile(Exception):
    """What stands at a path is no longer what the caller found clean there."""


def install_file(
    root_fd: int,
    rel_path: str,
    src_dir_fd: int,
    src_name: str,
    staged: Staged,
    *,
    replaces: os.stat_result | None,
) -> tuple[os.stat_result, bool]:
    """Move a staged file to ``rel_path`` atomically (an empty directory there gives way,
    as in :func:`write_file`). Returns its stat after the move, and whether it is still
    the staged file, unchanged (a write in between makes it a local change).

    ``replaces``: the stat of the file the caller found clean there (None: nothing was
    there). Anything else standing there now, a write since or a new file, may be an
    uncommitted change: :class:`ChangedMeanwhile` is raised and nothing is moved."""
    head, name = _split(rel_path)
    dfd = open_dir(root_fd, head, create=True)
    try:
        # Looked at again right before the move: the caller's look may be long past.
        now = _lstat_at(dfd, name)
        if replaces is None:
            if now is not None and not stat.S_ISDIR(now.st_mode):
                raise ChangedMeanwhile(rel_path)
        elif now is None or _sig(now) != _sig(replaces):
            raise ChangedMeanwhile(rel_path)
        try:
            _make_way(dfd, name)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise ChangedMeanwhile(rel_path) from exc  # a directory with files in it
        os.rename(src_name, name, src_dir_fd=src_dir_fd, dst_dir_fd=dfd)
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    finally:
        os.close(dfd)
    return st, _identity(st) == staged


def _sig(st: os.stat_result) -> tuple[int, ...]:
    # What a write or a replacement changes. Not the ctime: a file of an overlay's lower
    # layer shares its inode with other snapshots, whose links move it.
    return (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns)


def _identity(st: os.stat_result) -> Staged:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _new_file(
    dir_fd: int, name: str, fill: Callable[[int], None], *, mode: int, mtime_ns: int
) -> int:
    return _fill_new(_create(dir_fd, name), dir_fd, name, fill, mode=mode, mtime_ns=mtime_ns)


def _create(dir_fd: int, name: str) -> int:
    return os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=dir_fd,
    )


def _fill_new(
    fd: int, dir_fd: int, name: str, fill: Callable[[int], None], *, mode: int, mtime_ns: int
) -> int:
    """``fd``, just created as ``name``, filled and given its mode and mtime; on failure,
    closed and removed."""
    try:
        fill(fd)
        os.fchmod(fd, safe_mode(mode))
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    except BaseException:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)
        raise
    return fd


def _make_way(dir_fd: int, name: str) -> None:
    existing = _lstat_at(dir_fd, name)
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        # Only an empty directory gives way: files in it may be uncommitted.
        os.rmdir(name, dir_fd=dir_fd)


def make_dirs(root_fd: int, rel_dir: str) -> None:
    os.close(open_dir(root_fd, rel_dir, create=True))


def safe_mode(mode: int) -> int:
    """The bits of a volume's file mode that are applied to a file: the permission bits.

    Setuid, setgid and sticky bits come from whoever wrote the volume; applied by a
    privileged materializer they would plant set-id programs, so they are never applied.
    """
    return mode & 0o777


def remove_file(root_fd: int, rel_path: str) -> None:
    """Remove the file (or symlink) at ``rel_path``; a missing path is fine, and a
    directory standing there now is left alone (what is in it was never checked)."""
    head, name = _split(rel_path)
    try:
        dfd = open_dir(root_fd, head)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        st = _lstat_at(dfd, name)
        if st is None or stat.S_ISDIR(st.st_mode):
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dfd)
    finally:
        os.close(dfd)


def remove_empty_dir(root_fd: int, rel_dir: str) -> bool:
    """Remove a directory only if it is empty; True if it is gone."""
    head, name = _split(rel_dir)
    try:
        dfd = open_dir(root_fd, head)
    except (FileNotFoundError, NotADirectoryError):
        return True
    try:
        os.rmdir(name, dir_fd=dfd)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False
    finally:
        os.close(dfd)


def is_empty_dir(root_fd: int, rel_dir: str, ignoring: Collection[str] = ()) -> bool:
    """Is ``rel_dir`` a directory (not a symlink to one) with nothing in it (but the
    names in ``ignoring``)?"""
    try:
        dfd = open_dir(root_fd, rel_dir)
    except (FileNotFoundError, NotADirectoryError, InvalidPath):
        return False
    try:
        with os.scandir(dfd) as entries:
            return all(entry.name in ignoring for entry in entries)
    finally:
        os.close(dfd)


def remove_tree_at(dir_fd: int, name: str) -> None:
    # shutil.rmtree with dir_fd walks by descriptors and never follows symlinks.
    shutil.rmtree(name, dir_fd=dir_fd)


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def write_atomically(path: Path, body: bytes | Iterable[bytes | memoryview]) -> None:
    """Replace ``path`` with ``body``: temp file in the same directory, fsync, rename, fsync.

    ``body`` may come in pieces, written in turn: a large file is never whole in memory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for piece in (body,) if isinstance(body, bytes | bytearray | memoryview) else body:
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)  # pieces that failed to come leave no temp file behind
        raise
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# -- durability ------------------------------------------------------------------------------

_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _libc() -> ctypes.CDLL:
    # The symbols this process has loaded (libc's among them): finding libc by name would
    # run ldconfig at every start.
    return ctypes.CDLL(None, use_errno=True)


@functools.cache
def _sync_file_range() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    function = getattr(_libc(), "sync_file_range", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


def start_writeback(fd: int) -> None:
    """Start writing a file's dirty pages to disk without waiting for them.

    Content written long before the sync that makes it durable is on its way to the disk
    while the rest of the work goes on, so that sync finds little left to do. Advisory:
    where unsupported, the sync does all the work.
    """
    sync_file_range = _sync_file_range()
    if sync_file_range is not None:
        sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def sync_filesystem(path: str | os.PathLike[str]) -> None:
    """Make everything written to the filesystem holding ``path`` durable (``syncfs``;
    ``sync`` where the kernel has no syncfs). Raises OSError when the filesystem reports
    that data written to it could not be written back (EIO): that data is not durable."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        syncfs = getattr(_libc(), "syncfs", None)
        if syncfs is None:
            os.sync()
        elif syncfs(fd) != 0:
            err = ctypes.get_errno()
            if err != errno.ENOSYS:
                raise OSError(err, f"syncfs: {os.strerror(err)}", os.fspath(path))
            os.sync()
    finally:
        os.close(fd)


#: Up to this many changed paths, what changed is synced path by path (sync_changed).
#: Syncing the whole filesystem instead also waits for everything else written there,
#: on a node every pod's data: a one-file commit took 0.4-1 s beside 2 GiB another
#: program had just written, and 5-40 ms syncing its own paths. Past this many, one sync
#: of the filesystem costs less than a sync per path.
SYNC_EACH_LIMIT = 64


def sync_changed(root: str | os.PathLike[str], rel_paths: Collection[str]) -> None:
    """Make ``rel_paths`` inside ``root`` durable: :func:`sync_paths` for a few,
    :func:`sync_filesystem` past SYNC_EACH_LIMIT."""
    if len(rel_paths) > SYNC_EACH_LIMIT:
        sync_filesystem(root)
    else:
        sync_paths(root, rel_paths)


def sync_paths(root: str | os.PathLike[str], rel_paths: Collection[str]) -> None:
    """Make what each path inside ``root`` holds durable, and its name: a file's data, a
    directory's entries, and every directory above it up to the root (one made for it,
    or copied up by an overlay, holds its name; for a path that is gone, the nearest one
    still there records the removal). Nothing else written to the filesystem is waited
    for, unlike :func:`sync_filesystem`. Symlinks are never followed; what is neither a
    file nor a directory needs nothing of its own. Raises OSError when the filesystem
    reports that data could not be written back (EIO)."""
    root_fd = open_root(os.fspath(root))
    files: list[int] = []
    dirs = {""}.union(*(paths.ancestors(rel) for rel in rel_paths))
    try:
        for rel in sorted(rel_paths):
            _open_to_sync(root_fd, rel, files, dirs)
        # Every file's writeback is under way before the first wait, so they overlap.
        for fd in files:
            start_writeback(fd)
        for fd in files:
            os.fdatasync(fd)
        # One directory open at a time: a deep tree holds many.
        synced: set[str] = set()
        for rel in sorted(dirs, key=paths.deepest_first):
            found, fd = _nearest_dir(root_fd, rel)
            try:
                if found not in synced:
                    os.fsync(fd)
                    synced.add(found)
            finally:
                os.close(fd)
    finally:
        for fd in [root_fd, *files]:
            os.close(fd)


def _open_to_sync(root_fd: int, rel: str, files: list[int], dirs: set[str]) -> None:
    """Open ``rel`` into ``files`` if it is a regular file; add it to ``dirs`` if it is a
    directory."""
    head, name = _split(rel)
    try:
        dir_fd = open_dir(root_fd, head)
    except (OSError, InvalidPath) as exc:
        if _gone(exc):
            return  # its parent, or the nearest one still there, records that
        raise
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        # Checked before opening: a device is never opened (that may act on it).
        if stat.S_ISREG(st.st_mode):
            fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
            if stat.S_ISREG(os.fstat(fd).st_mode):
                files.append(fd)
                return
            os.close(fd)
        elif stat.S_ISDIR(st.st_mode):
            dirs.add(rel)
    except OSError as exc:
        if not _gone(exc) and exc.errno != errno.ENXIO:  # else removed or swapped meanwhile
            raise
    finally:
        os.close(dir_fd)


def _nearest_dir(root_fd: int, rel_dir: str) -> tuple[str, int]:
    """``rel_dir``, or its nearest parent where it is gone: its path and a descriptor."""
    while True:
        try:
            return rel_dir, open_dir(root_fd, rel_dir)
        except (OSError, InvalidPath) as exc:
            if not rel_dir or not _gone(exc):
                raise
            rel_dir = _split(rel_dir)[0]


def _gone(exc: OSError | InvalidPath) -> bool:
    """Does this error of walking to a path say that it is no longer there as a path of
    directories (removed, or something else put where a directory was)?"""
    return isinstance(exc, InvalidPath) or exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
