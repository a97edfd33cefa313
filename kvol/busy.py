"""Which processes hold files or working directories inside a working copy.

A reload replaces files under running programs; like Modal, kvol refuses it while any
process has a file open or its working directory inside the copy, and names them.

Holders are matched by what they hold, not by the path they reached it by: a pod reaches
a copy through a bind mount at the kubelet's target path (or through any other mount, in
any mount namespace), so a path under the copy's root proves nothing either way. A held
file is inside the copy when it is on the copy's device and its inode is one of the
copy's (found by walking the copy, readdir only, when there is anything to look up).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

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
        inside = _inodes_in(root, {ino for _, _, ino in held})
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
