"""kvol: named, persistent volumes shared by many pods, with Modal Volume semantics.

``from kvol import Volume`` is the SDK (see :mod:`kvol.volume`); the errors it raises are
importable from here too. Importing ``kvol`` alone loads only the error classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvol.errors import (
    AlreadyExists,
    Conflict,
    CorruptData,
    InvalidArgument,
    InvalidPath,
    KvolError,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    ReadOnly,
    StoreError,
    StoreUnavailable,
    Unsupported,
    VersionMismatch,
    VolumeBusy,
)

if TYPE_CHECKING:
    from kvol.volume import BatchUpload, FileEntry, FileEntryType, Volume, VolumeInfo

__all__ = [
    "AlreadyExists",
    "BatchUpload",
    "Conflict",
    "CorruptData",
    "FileEntry",
    "FileEntryType",
    "InvalidArgument",
    "InvalidPath",
    "KvolError",
    "LimitExceeded",
    "NotFound",
    "PermissionDenied",
    "ReadOnly",
    "StoreError",
    "StoreUnavailable",
    "Unsupported",
    "VersionMismatch",
    "Volume",
    "VolumeBusy",
    "VolumeInfo",
]

_SDK = {"BatchUpload", "FileEntry", "FileEntryType", "Volume", "VolumeInfo"}

#: Whether this process records Prometheus metrics (kvol.metrics reads it once, when it is
#: first imported). The ``kvol`` program turns it off: it runs one command and exits,
#: nothing scrapes it, and loading prometheus_client is a third of a short command's time.
_METRICS = True


def __getattr__(name: str) -> Any:
    # The SDK pulls in the store and content machinery: load it on first use only.
    if name in _SDK:
        from kvol import volume

        return getattr(volume, name)
    raise AttributeError(f"module 'kvol' has no attribute {name!r}")
