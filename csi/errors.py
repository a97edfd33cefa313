"""Errors of the node plugin itself, next to the core's (:mod:`kvol.errors`).

They subclass :class:`kvol.errors.KvolError`, so the one table in :mod:`kvol.csi.server`
maps every failure, the core's and the plugin's, to a gRPC status code.
"""

from __future__ import annotations

from kvol.errors import InvalidArgument, KvolError


class OperationPending(KvolError):
    """Another call for the same volume id is still running (the CSI spec's ABORTED)."""

    retryable = True


class Forbidden(KvolError):
    """The caller may not have this volume (a pod asking for another namespace's)."""


class PublishedElsewhere(KvolError):
    """The target path already holds another volume or another mount configuration."""


class NotPublished(KvolError):
    """No volume with that id is published at that path on this node."""


class MissingField(InvalidArgument):
    """A required request field is empty."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} is required")
        self.field = field
