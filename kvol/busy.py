"""Which processes hold files or working directories inside a working copy.

A reload replaces files under running programs; like Modal, kvol refuses it while any
process has a file open or its working directory inside the copy, and names them.

Holders are matched by what they hold, not by the path they reached it by: a pod reaches
a copy through a bind mount at the kubelet's target path (or through any other mount, in
any mount namespace), so a path under the copy's root proves nothing either way. A held
file is inside the copy when it is on the copy's device and its inode is one of the
copy's.

Most held files on the copy's device are elsewhere (the libraries every process maps,
when the copy is on the root filesystem), and walking a large copy to show it costs more
than the rest of a small reload. So a held file is first placed by its path, where that
path proves where it is: resolved here to that very inode, without symlinks, the file's
only link (or a directory), and reached through a mount of the copy's device, whose
mount table entry gives the file's place in the filesystem. It is inside when that place
is under the copy's own, or under a mount of the device below the copy's root (a reload
writes through those too). Anything not placed so (another mount namespace's path, a
file of several links, a filesystem whose files have devices of their own) is looked up
by walking the copy, readdir only, as before.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from dataclasses import dataclass

from kvol.mounting import MountEntry, mount_table
from kvol.paths import RESERVED


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str
    path: str

    def __str__(self) -> str:
        return f"{self.command}[{self.pid}] {self.path}"


def find_holders(root: str, device: int | None = None) -> list[Holder]:
    """Processes with an open file, a mapped file, cwd, root or executable inside ``root``.

    ``device``: when the copy is a mount of its own (an overlay), everything on that
    device is inside it. Otherwise a held file on the device of ``root`` is inside when
    its inode is in the copy's tree (the reserved directory excepted).
    """
    root = os.path.realpath(root)
    reserved = os.path.join(root, RESERVED)
    try:
        root_st = os.stat(root)
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    own_device = device is not None
    dev = device if device is not None else root_st.st_dev
    reserved_ino = _inode(reserved)
    # (pid, link target, inode) of everything held on the copy's device, by path or not.
    held: list[tuple[int, str, int]] = []
    # Inodes held with no link left (deleted while open): in no directory, so not the copy's.
    unlinked: set[int] = set()
    for pid in pids:
        base = f"/proc/{pid}"
        links = ["cwd", "root", "exe"]
        with contextlib.suppress(OSError):  # exited, or not ours to read
            links += [f"fd/{fd}" for fd in os.listdir(f"{base}/fd")]
        seen: set[int] = set()
        # Memory-mapped files stay in use after their descriptor is closed; writes to a
        # shared mapping of a replaced file would be lost like any other.
        found = _mapped(pid, dev)
        for link in links:
            try:
                st = os.stat(f"{base}/{link}")
                if st.st_dev != dev:
                    continue
                if st.st_nlink == 0:
                    unlinked.add(st.st_ino)
                found.append((st.st_ino, os.readlink(f"{base}/{link}")))
            except OSError:
                continue
        for ino, target in found:
            if target == reserved or target.startswith(reserved + "/"):
                continue  # kvol's own metadata (the lock of the reload asking)
            if ino not in seen:  # once per file, however often it is mapped or open
                seen.add(ino)
                held.append((pid, target, ino))
    if not held:
        return []
    if own_device:
        inside = {ino for _, _, ino in held} - {reserved_ino}
    else:
        # By path and inode: one path may name other files in other mount namespaces.
        targets = {(target, ino) for _, target, ino in held if ino not in unlinked}
        inside, unplaced = _Placer(root, dev).place(targets)
        if unplaced:
            inside |= _inodes_in(root, unplaced)
    holders: list[Holder] = []
    commands: dict[int, str] = {}
    for pid, target, ino in held:
        if ino not in inside:
            continue
        if pid not in commands:
            commands[pid] = _command(pid)
        holders.append(Holder(pid, commands[pid], target))
    return holders


def _mapped(pid: int, dev: int) -> list[tuple[int, str]]:
    """(inode, path) of the files on ``dev`` that process ``pid`` has mapped."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            text = f.read()
    except OSError:
        return []
    # Lines read "range perms offset MAJOR:MINOR inode path", the device in hex.
    token = b" %02x:%02x " % (os.major(dev), os.minor(dev))
    if token not in text:
        return []
    found = []
    for line in text.splitlines():
        if token not in line:
            continue
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[4] == b"0":
            continue  # anonymous
        try:
            ino = int(fields[4])
        except ValueError:
            continue
        found.append((ino, os.fsdecode(fields[5])))
    return found


class _Placer:
    """Places held files in or out of the copy by their paths, where the paths prove it
    (see the module's docstring)."""

    def __init__(self, root: str, dev: int) -> None:
        self._root = root
        self._dev = dev
        self._device = f"{os.major(dev)}:{os.minor(dev)}"
        self._mounts: dict[int, MountEntry] = {}
        self._canonical: dict[str, bool] = {}
        # Places in the filesystem that are the copy: its root's, and every mount of the
        # device below the root (kvol's own directory excepted). None: not known.
        self._own: str | None = None
        self._own_reserved = ""
        self._below: list[str] = []

    def place(self, targets: set[tuple[str, int]]) -> tuple[set[int], set[int]]:
        """Of the inodes held (by the paths ``targets`` give them), those inside the copy,
        and those no path places either way."""
        inodes = {ino for _, ino in targets}
        if not self._load():
            return set(), inodes
        inside: set[int] = set()
        placed: set[int] = set()
        for target, ino in targets:
            if ino in placed:
                continue
            where = self._locate(target, ino)
            if where is None:
                continue
            placed.add(ino)
            if self._is_copys(where):
                inside.add(ino)
        return inside, inodes - placed

    def _load(self) -> bool:
        try:
            self._mounts = {m.mount_id: m for m in mount_table()}
        except (OSError, ValueError):
            return False
        own = self._locate(self._root, None)
        if own is None:
            return False
        self._own = own
        self._own_reserved = posixpath.join(own, RESERVED)
        reserved = posixpath.join(self._root, RESERVED)
        for m in self._mounts.values():
            point = m.mount_point
            if (
                m.device == self._device
                and _under(point, self._root)
                and not _at_or_under(point, reserved)
            ):
                self._below.append(m.root)
        return True

    def _is_copys(self, where: str) -> bool:
        assert self._own is not None
        if _at_or_under(where, self._own):
            return not _at_or_under(where, self._own_reserved)
        return any(_at_or_under(where, b) for b in self._below)

    def _locate(self, path: str, ino: int | None) -> str | None:
        """Where in its filesystem the file at ``path`` is, if ``path`` proves it: no
        symlinks on the way, the inode ``ino`` (when given) as its only link or a
        directory, reached through a mount of the copy's device."""
        if not path.startswith("/") or not self._is_canonical(posixpath.dirname(path)):
            return None
        try:
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            mount = self._mounts.get(_mount_id(fd), None)
        except OSError:
            return None
        finally:
            os.close(fd)
        if st.st_dev != self._dev or (ino is not None and st.st_ino != ino):
            return None
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink != 1:
            return None  # another link may be anywhere
        if mount is None or mount.device != self._device:
            return None
        point = mount.mount_point
        if path == point:
            within = ""
        elif point == "/":
            within = path[1:]
        elif _under(path, point):
            within = path[len(point) + 1 :]
        else:
            return None
        return posixpath.normpath(posixpath.join(mount.root, within))

    def _is_canonical(self, directory: str) -> bool:
        known = self._canonical.get(directory)
        if known is None:
            known = self._canonical[directory] = os.path.realpath(directory) == directory
        return known


def _under(path: str, top: str) -> bool:
    """Is ``path`` strictly below the directory ``top`` (both absolute and normal)?"""
    return path.startswith(top + "/") if top != "/" else path != "/"


def _at_or_under(path: str, top: str) -> bool:
    return path == top or _under(path, top)


def _mount_id(fd: int) -> int:
    """The id of the mount ``fd`` was opened through (-1 when the kernel does not say)."""
    with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
        for line in f:
            if line.startswith(b"mnt_id:"):
                return int(line.split()[1])
    return -1


def _inode(path: str) -> int | None:
    try:
        return os.lstat(path).st_ino
    except OSError:
        return None


def _inodes_in(root: str, wanted: set[int]) -> set[int]:
    """The inodes of ``wanted`` that are the root or an entry of the tree under it (the
    reserved directory and mount points below it excepted); stops once all are found."""
    found: set[int] = set()
    root_st = os.stat(root)
    if root_st.st_ino in wanted:
        found.add(root_st.st_ino)
    stack = [(root, True)]
    while stack and len(found) < len(wanted):
        directory, top = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if top and entry.name == RESERVED:
                continue
            try:
                ino = entry.inode()
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if ino in wanted:
                found.add(ino)
            if is_dir:
                # Another filesystem mounted inside is not the copy (its inodes differ).
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_dev == root_st.st_dev:
                        stack.append((entry.path, False))
    return found


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"
