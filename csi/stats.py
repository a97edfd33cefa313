"""Volume stats: how much a published copy holds and how much room is left, in bytes
and inodes, as NodeGetVolumeStats reports them."""

from __future__ import annotations

import os

from kvol.csi.proto import csi_pb2
from kvol.workcopy import WorkingCopy


def volume_usage(wc: WorkingCopy) -> list[csi_pb2.VolumeUsage]:
    """Used: what the copy's index holds; available: what the filesystem under it has."""
    index = wc.index
    files = dict(index.files)  # a copy: a commit may update the index meanwhile
    used_bytes = sum(e.record.size for e in files.values() if e.record is not None)
    used_inodes = len(files) + len(index.dirs)
    fs = os.statvfs(wc.root)
    unit = csi_pb2.VolumeUsage.Unit
    return [
        csi_pb2.VolumeUsage(
            unit=unit.BYTES,
            used=used_bytes,
            available=fs.f_bavail * fs.f_frsize,
            total=used_bytes + fs.f_bavail * fs.f_frsize,
        ),
        csi_pb2.VolumeUsage(
            unit=unit.INODES,
            used=used_inodes,
            available=fs.f_favail,
            total=used_inodes + fs.f_favail,
        ),
    ]
