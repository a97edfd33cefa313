"""Domain errors of kvol.

Every failure the core reports is one of these. Each boundary translates them once:
the CLI into one line and an exit code, the CSI plugin into a gRPC status, the
operator into a kopf temporary or permanent error. ``retryable`` tells those
boundaries whether trying the same thing later can succeed.
"""

from __future__ import annotations


class KvolError(Exception):
    """Base of every kvol error."""

    #: Trying the same operation later may succeed (the store was down, a lock was held).
    retryable: bool = False
    #: Process exit code the CLI uses for this error.
    exit_code: int = 1


class InvalidArgument(KvolError, ValueError):
    """Bad input from a user: a path, a name, a URL, an option."""

    exit_code = 2


class InvalidPath(InvalidArgument):
    """A volume path that is absolute, escapes the root, or holds a forbidden byte."""


class NotFound(KvolError, FileNotFoundError):
    """A volume, file, object or commit that does not exist."""

    exit_code = 3


class AlreadyExists(KvolError, FileExistsError):
    """Something that must be new exists already (a volume name, a file without --force)."""

    exit_code = 4


class Conflict(KvolError):
    """Another writer took what this one tried to take (a log position, a name)."""

    retryable = True
    exit_code = 5


class VolumeBusy(KvolError, RuntimeError):
    """Files or working directories inside the working copy are held by processes.

    Also a RuntimeError: that is what Modal's ``reload()`` raises when the volume is busy,
    so ``except RuntimeError`` written for Modal catches it."""

    retryable = True
    exit_code = 6

    def __init__(self, message: str, holders: list[tuple[int, str, str]] | None = None) -> None:
        super().__init__(message)
        #: (pid, command, path) of every process found holding the copy.
        self.holders = holders or []


class LimitExceeded(KvolError):
    """A commit would break one of the volume's limits; nothing was published."""

    exit_code = 7


class VersionMismatch(InvalidArgument):
    """A volume exists with another version than the one asked for."""


class CorruptData(KvolError):
    """Content or a log entry failed its hash or its schema: rejected, never applied."""

    exit_code = 8


class StoreBehind(KvolError):
    """The store lacks commits a working copy has seen (restored from an older backup, or
    another store at the same address): the copy is ahead of it and must not commit."""

    exit_code = 11


class HistoryPruned(NotFound):
    """A commit older than where the volume's retained history begins: its retention
    policy pruned it."""


class StaleBase(StoreBehind):
    """A working copy's base is older than where the volume's retained history begins:
    it must reload (which keeps its local changes) before it commits."""


class StoreError(KvolError):
    """The store failed in a way that is not the caller's fault."""

    exit_code = 9


class StoreUnavailable(StoreError):
    """The store could not be reached or answered with a transient failure."""

    retryable = True


class PermissionDenied(StoreError, PermissionError):
    """The store refused the credentials or the operation."""


class CredentialsNotFound(StoreError):
    """No credentials for the store in any place kvol looks: nothing was sent to it."""


class Unsupported(StoreError):
    """The store lacks something kvol needs (for example conditional writes)."""


class ReadOnly(KvolError):
    """A write through a read-only mount or handle."""

    exit_code = 10


class WriteBackFailed(KvolError):
    """The disk of a working copy could not write its files back (an I/O error, or no
    room left beneath the filesystem): they are not durable, so nothing that names them
    was recorded or published. Retryable once the disk has room again."""

    retryable = True

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
