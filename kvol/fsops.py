"""File operations inside a working copy that never follow a symlink out of it.

The tree of a working copy is writable by whoever uses it (a pod), so every path is
walked one component at a time from a descriptor of the root with ``O_NOFOLLOW``: a
directory swapped for a symlink mid-way makes the operation fail instead of reading or
writing outside the root.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from kvol.errors import InvalidPath

#: Temporary files of in-progress writes carry this prefix; scans never report them.
TEMP_PREFIX = ".kvol-tmp-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_root(root: str) -> int:
    return os.open(root, _DIR_FLAGS)


def open_dir(root_fd: int, rel_dir: str, *, create: bool = False) -> int:
    """A descriptor of directory ``rel_dir`` ("" is the root), walked without symlinks.

    With ``create``, missing directories are made, and a plain file standing where a
    directory must be is replaced (the volume says a directory is there now).
    """
    fd = os.dup(root_fd)
    if not rel_dir:
        return fd
    try:
        for name in rel_dir.split("/"):
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o755, dir_fd=fd)
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except (NotADirectoryError, OSError) as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP) or not create:
                    raise
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise InvalidPath(f"{rel_dir!r} passes through a symlink") from exc
                os.unlink(name, dir_fd=fd)
                os.mkdir(name, 0o755, dir_fd=fd)
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _split(rel_path: str) -> tuple[str, str]:
    head, _, name = rel_path.rpartition("/")
    return head, name


def open_file(root_fd: int, rel_path: str) -> int:
    """Open a regular file for reading; refuses symlinks anywhere on the path."""
    head, name = _split(rel_path)
    dfd = open_dir(root_fd, head)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    finally:
        os.close(dfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, "not a regular file", rel_path)
    return fd


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

    A directory standing at ``rel_path`` is removed first (the volume says a file is
    there now); readers of the old file keep their open copy.
    """
    head, name = _split(rel_path)
    dfd = open_dir(root_fd, head, create=True)
    try:
        tmp = TEMP_PREFIX + secrets.token_hex(8)
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dfd,
        )
        try:
            try:
                fill(fd)
                os.fchmod(fd, mode & 0o7777)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
                existing = _lstat_at(dfd, name)
                if existing is not None and stat.S_ISDIR(existing.st_mode):
                    remove_tree_at(dfd, name)
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


def make_dirs(root_fd: int, rel_dir: str) -> None:
    os.close(open_dir(root_fd, rel_dir, create=True))


def remove(root_fd: int, rel_path: str) -> None:
    """Remove a file or a whole directory; a missing path is fine."""
    head, name = _split(rel_path)
    try:
        dfd = open_dir(root_fd, head)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        st = _lstat_at(dfd, name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            remove_tree_at(dfd, name)
        else:
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


def remove_tree_at(dir_fd: int, name: str) -> None:
    # shutil.rmtree with dir_fd walks by descriptors and never follows symlinks.
    shutil.rmtree(name, dir_fd=dir_fd)


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def write_atomically(path: Path, body: bytes) -> None:
    """Replace ``path`` with ``body``: temp file in the same directory, fsync, rename, fsync."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
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
