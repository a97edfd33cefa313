"""Which processes hold files or working directories inside a working copy.

A reload replaces files under running programs; like Modal, kvol refuses it while any
process has a file open or its working directory inside the copy, and names them.
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
    """Processes with an open file, cwd or root inside ``root``.

    ``device``: when the copy is a mount of its own (an overlay), match by device number
    instead of path, which also finds processes of other mount namespaces (containers),
    whose paths differ from ours.
    """
    root = os.path.realpath(root)
    reserved = os.path.join(root, RESERVED)
    holders: list[Holder] = []
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return holders
    for pid in pids:
        base = f"/proc/{pid}"
        links = ["cwd"]
        with contextlib.suppress(OSError):  # exited, or not ours to read
            links += [f"fd/{fd}" for fd in os.listdir(f"{base}/fd")]
        command = None
        for link in links:
            try:
                target = os.readlink(f"{base}/{link}")
            except OSError:
                continue
            inside = target == root or target.startswith(root + "/")
            if device is not None and not inside:
                try:
                    inside = os.stat(f"{base}/{link}").st_dev == device
                except OSError:
                    inside = False
            if not inside or target == reserved or target.startswith(reserved + "/"):
                continue
            if command is None:
                command = _command(pid)
            holders.append(Holder(pid, command, target))
    return holders


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"
