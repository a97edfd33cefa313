"""The plugin's mount operations: bind mounts at target paths, and removal that never
reaches into a live mount.

The system calls and the mount table are the core's (:mod:`kvol.overlay`); this module
adds the rules the plugin keeps: every step is idempotent (mounting what is mounted, or
unmounting what is not, is a no-op), and a directory is only ever removed recursively
after checking that nothing is mounted at or below it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kvol.errors import KvolError
from kvol.mounting import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REMOUNT,
    MountError,
    is_mountpoint,
    mount,
    mounts_under,
    unmount,
)

__all__ = [
    "LiveMount",
    "MountError",
    "bind",
    "is_mountpoint",
    "mounts_under",
    "remove_dir",
    "remove_tree",
    "unmount",
    "unmount_tree",
]


class LiveMount(KvolError):
    """Refused to remove a directory that is, or holds, a mount point."""

    retryable = True


def bind(
    source: str | Path, target: str | Path, *, readonly: bool = False, noexec: bool = False
) -> None:
    """Bind-mount ``source`` at ``target``, always ``nosuid,nodev`` (and read-only or
    ``noexec`` if asked). Mounting what is mounted only makes sure of its flags."""
    fresh = not is_mountpoint(target)
    if fresh:
        mount(str(source), target, None, MS_BIND)
    # A bind mount takes its flags from a second, remounting call (the first ignores
    # them). Setuid and setgid bits and device files from a volume are never honoured.
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV
    if readonly:
        flags |= MS_RDONLY
    if noexec or os.statvfs(target).f_flag & os.ST_NOEXEC:
        flags |= MS_NOEXEC  # kept if the source had it: a remount sets every flag anew
    try:
        mount("none", target, None, flags)
    except MountError:
        if fresh:
            unmount(target)
        raise


def is_readonly_mount(target: str | Path) -> bool:
    return bool(os.statvfs(target).f_flag & os.ST_RDONLY)


def unmount_tree(path: str | Path) -> list[str]:
    """Unmount every mount at or below ``path``, deepest first; returns what it unmounted."""
    done = []
    for point in mounts_under(path):
        if unmount(point):
            done.append(point)
    return done


def remove_tree(path: str | Path) -> None:
    """``rm -r path``, refused with :class:`LiveMount` if anything is mounted at or below it."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return
    live = mounts_under(p)
    if live:
        raise LiveMount(f"refusing to remove {p}: {', '.join(live)} still mounted")
    # Recursing without following symlinks keeps the removal inside this directory.
    shutil.rmtree(p)


def remove_dir(path: str | Path) -> None:
    """Remove an empty directory (a target path the plugin created); no-op if absent."""
    p = Path(path)
    if is_mountpoint(p):
        raise LiveMount(f"refusing to remove {p}: still mounted")
    try:
        p.rmdir()
    except FileNotFoundError:
        return
