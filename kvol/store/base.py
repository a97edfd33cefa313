"""The store interface: the only thing kvol asks of durable storage.

A store holds immutable objects under ``/``-separated keys. Its one atomic primitive is
:meth:`Store.put_if_absent`; the commit protocol needs nothing else. Implementations
override the ``_``-prefixed methods; the public methods wrap them once with metrics and
with the translation of backend errors into :mod:`kvol.errors` (the original error stays
as ``__cause__``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from kvol import errors, metrics

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    #: Last modification, seconds since the epoch (used by garbage collection's grace period).
    mtime: float


def check_key(key: str) -> str:
    """Reject keys that could escape a store's root or clash with its bookkeeping."""
    if not key or key.startswith("/") or key.endswith("/") or "\x00" in key:
        raise errors.InvalidArgument(f"invalid store key {key!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") or p.startswith(".tmp") for p in parts):
        raise errors.InvalidArgument(f"invalid store key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    if prefix and (not prefix.endswith("/") or prefix.startswith("/")):
        raise errors.InvalidArgument(f"store prefix must be empty or end with '/': {prefix!r}")
    if prefix:
        check_key(prefix[:-1])
    return prefix


class Store(ABC):
    """Durable object storage. Thread-safe; cheap to share."""

    #: Short name used as a metric label ("fs", "s3").
    kind: str = "store"

    # -- public API -------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """The whole object. Raises :class:`errors.NotFound` when it does not exist."""
        return self._call("get", self._get, check_key(key))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start``; fewer only when the object ends first."""
        if start < 0 or length < 0:
            raise errors.InvalidArgument("range start and length must be non-negative")
        if length == 0:
            return b""
        return self._call("get_range", self._get_range, check_key(key), start, length)

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Create or replace an object atomically (readers see all of it or none)."""
        self._call("put", self._put, check_key(key), data)

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        """Create an object only if the key is free. True if created, False if it existed."""
        return self._call("put_if_absent", self._put_if_absent, check_key(key), data)

    def head(self, key: str) -> ObjectInfo:
        """Size and time of an object. Raises :class:`errors.NotFound`."""
        return self._call("head", self._head, check_key(key))

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except errors.NotFound:
            return False
        return True

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (recursively), in key order, after ``start_after``."""
        check_prefix(prefix)
        started = time.perf_counter()
        result = "ok"
        try:
            yield from self._list(prefix, start_after)
        except errors.KvolError:
            result = "error"
            raise
        except Exception as exc:
            result = "error"
            raise self._translate(exc) from exc
        finally:
            self._observe("list", result, started)

    def delete(self, key: str) -> None:
        """Remove an object; removing a missing object is not an error."""
        self._call("delete", self._delete, check_key(key))

    def sync(self) -> None:
        """Make every object written so far durable before anything that refers to them.

        The commit protocol calls this before publishing a log entry. Stores whose writes
        are durable when they return (S3) need not override it.
        """
        return None

    def close(self) -> None:
        """Release connections and threads."""
        return None

    @property
    @abstractmethod
    def url(self) -> str:
        """Where this store lives, without credentials (safe to log)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    # -- for implementations ------------------------------------------------------------

    @abstractmethod
    def _get(self, key: str) -> bytes: ...

    @abstractmethod
    def _get_range(self, key: str, start: int, length: int) -> bytes: ...

    @abstractmethod
    def _put(self, key: str, data: bytes | memoryview) -> None: ...

    @abstractmethod
    def _put_if_absent(self, key: str, data: bytes | memoryview) -> bool: ...

    @abstractmethod
    def _head(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def _list(self, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def _translate(self, exc: Exception) -> errors.KvolError:
        """Map a backend exception to a domain error (the one table per store)."""

    # -- internals ------------------------------------------------------------------------

    def _call(self, operation: str, fn: Callable[..., T], *args: object) -> T:
        started = time.perf_counter()
        result = "ok"
        try:
            return fn(*args)
        except errors.NotFound:
            result = "not_found"
            raise
        except errors.KvolError:
            result = "error"
            raise
        except Exception as exc:
            translated = self._translate(exc)
            result = "not_found" if isinstance(translated, errors.NotFound) else "error"
            try:
                raise translated from exc
            finally:
                # A local naming the raised error ties it to this frame in a cycle that
                # keeps every caller's frame (and the data they hold, like an upload's
                # chunk) alive until the cyclic collector happens to run.
                del translated
        finally:
            self._observe(operation, result, started)

    def _observe(self, operation: str, result: str, started: float) -> None:
        metrics.STORE_REQUESTS.labels(self.kind, operation, result).inc()
        metrics.STORE_REQUEST_SECONDS.labels(self.kind, operation).observe(
            time.perf_counter() - started
        )
