"""Mount primitives: overlay, bind and read-only image mounts, unmounting, the mount table.

The overlay layout, the snapshots' images and the CSI plugin's bind mounts all stand on
these system calls.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from kvol.errors import InvalidArgument, KvolError

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

_libc: ctypes.CDLL | None = None


class MountError(KvolError):
    """A mount or unmount system call failed."""

    def __init__(self, message: str, errno_: int = 0) -> None:
        super().__init__(message)
        self.errno = errno_


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        # This process's own symbols, libc's among them (no ldconfig run to find it).
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return _libc


def mount(
    source: str, target: str | Path, fstype: str | None, flags: int, data: str | None = None
) -> None:
    """The mount(2) system call; raises :class:`MountError` naming the target."""
    rc = _c().mount(
        source.encode(),
        os.fsencode(target),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise MountError(f"mount {source} on {target} failed: {os.strerror(err)}", err)


def umount(target: str | Path, flags: int = 0) -> None:
    if _c().umount2(os.fsencode(target), flags) != 0:
        err = ctypes.get_errno()
        raise MountError(f"unmount of {target} failed: {os.strerror(err)}", err)


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    #: The filesystem's device as "major:minor" (what st_dev of its files is, but on
    #: filesystems such as btrfs, whose subvolumes each have a device of their own).
    device: str
    #: The directory of the filesystem that is mounted (not "/" for a bind mount).
    root: str
    mount_point: str
    options: str
    fstype: str
    source: str
    super_options: str


def unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in paths as octal escapes.
    if "\\" not in field:
        return field
    out = bytearray()
    raw = field.encode("utf-8", "surrogateescape")  # as the table was read
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 3 < len(raw) and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def mount_table() -> list[MountEntry]:
    """This process's mounts, from ``/proc/self/mountinfo``."""
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            head, _, tail = line.rstrip("\n").partition(" - ")
            fields = head.split(" ")
            rest = tail.split(" ")
            if len(fields) < 6 or len(rest) < 3:
                continue
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    device=fields[2],
                    root=unescape(fields[3]),
                    mount_point=unescape(fields[4]),
                    options=fields[5],
                    fstype=rest[0],
                    source=unescape(rest[1]),
                    super_options=rest[2],
                )
            )
    return entries


def _real(path: str | Path) -> str:
    return os.path.realpath(path)


def is_mountpoint(path: str | Path) -> bool:
    """Whether something is mounted at ``path`` (bind mounts included)."""
    where = _real(path)
    return any(e.mount_point == where for e in mount_table())


def mounts_under(path: str | Path) -> list[str]:
    """Mount points at or below ``path``, deepest first (the order to unmount them)."""
    where = _real(path)
    prefix = where.rstrip("/") + "/"
    found = {
        e.mount_point
        for e in mount_table()
        if e.mount_point == where or e.mount_point.startswith(prefix)
    }
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def overlays_on(lower: str | Path) -> list[str]:
    """Mount points of the overlays whose lower layer is ``lower``."""
    where = _real(lower)
    found = []
    for e in mount_table():
        if e.fstype != "overlay":
            continue
        for option in e.super_options.split(","):
            key, _, value = option.partition("=")
            if key == "lowerdir" and where in {_real(unescape(p)) for p in value.split(":")}:
                found.append(e.mount_point)
    return found


def overlay_supported() -> bool:
    """Whether this kernel has overlayfs and this process may mount (root)."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/filesystems", encoding="ascii") as f:
            return any(line.split()[-1] == "overlay" for line in f if line.strip())
    except OSError:
        return False


def mount_overlay(
    lower: str | Path, upper: str | Path, work: str | Path, target: str | Path
) -> None:
    """Mount an overlay of ``upper`` (read-write) over ``lower`` (read-only) at ``target``.

    ``redirect_dir`` and ``metacopy`` stay off, so every change is a plain entry in the
    upper layer (a renamed directory is copied, a changed file holds its data): the
    commit can read changes from the upper layer alone.
    """
    for p in (lower, upper, work):
        if "," in str(p) or ":" in str(p):
            raise InvalidArgument(f"overlay layer path {p} may not contain ',' or ':'")
    options = f"lowerdir={lower},upperdir={upper},workdir={work},redirect_dir=off,metacopy=off"
    mount("overlay", target, "overlay", MS_NOSUID | MS_NODEV, options)


def unmount(target: str | Path, *, lazy: bool = False) -> bool:
    """Unmount ``target`` if something is mounted there; returns whether it unmounted.

    A busy mount fails (EBUSY) unless ``lazy``: callers that must not lose writes in
    flight see the error and retry later.
    """
    if not is_mountpoint(target):
        return False
    try:
        umount(target, MNT_DETACH if lazy else 0)
    except MountError as exc:
        if exc.errno == errno.EINVAL and not is_mountpoint(target):
            return False  # unmounted by someone else meanwhile
        raise
    return True
