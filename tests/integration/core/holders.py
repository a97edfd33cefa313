"""Real processes that hold files or directories of a working copy, for the busy checks."""

from __future__ import annotations

import subprocess

import pytest

from kvol.errors import VolumeBusy
from kvol.workcopy import WorkingCopy

#: Opens argv[1] in mode argv[2], says "ready", and keeps it open.
HOLD_OPEN = """
import sys, time
handle = open(sys.argv[1], sys.argv[2])
print("ready", flush=True)
time.sleep(120)
"""

#: A shared mapping, its descriptor closed: writes through it go to the mapped inode.
HOLD_MAPPED = """
import mmap, sys, time
with open(sys.argv[1], "r+b") as f:
    mapped = mmap.mmap(f.fileno(), 0)
print("ready", flush=True)
time.sleep(120)
"""


def start(args: list[str], **kwargs: object) -> subprocess.Popen[str]:
    child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, **kwargs)  # type: ignore[call-overload]
    return child  # type: ignore[no-any-return]


def stop(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait(timeout=10)


def reload_refused_for(reader: WorkingCopy, child: subprocess.Popen[str]) -> VolumeBusy:
    """Reload ``reader``, which must refuse, naming ``child`` among the holders."""
    with pytest.raises(VolumeBusy) as info:
        reader.reload()
    assert child.pid in [pid for pid, _, _ in info.value.holders]
    return info.value
