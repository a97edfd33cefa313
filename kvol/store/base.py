"""The store interface: the only thing kvol asks of durable storage.

A store holds immutable objects under ``/``-separated keys. Its one atomic primitive is
:meth:`Store.put_if_absent`; the commit protocol needs nothing else. Implementations
override the ``_``-prefixed methods; the public methods wrap them once with metrics and
with the translation of backend errors into :mod:`kvol.errors` (the original error stays
as ``__cause__``).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Container, Iterator
from dataclasses import dataclass
from typing import TypeVar

from kvol import errors, metrics

T = TypeVar("T")

_CLOCK_LOCK = threading.Lock()
_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def elapsed_clock() -> float:
    """Seconds on a clock that only moves forward and keeps counting while the machine is
    suspended (Linux CLOCK_BOOTTIME; the monotonic clock elsewhere): durations measured on
    it are right whatever the wall clock does."""
    if _BOOTTIME is not None:
        return time.clock_gettime(_BOOTTIME)
    return time.monotonic()


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
    #: The store's clock as last measured: (its time, :func:`elapsed_clock` then).
    _clock: tuple[float, float] | None = None

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

    def put(self, key: str, data: bytes | memoryview, *, staged: bool = False) -> None:
        """Create or replace an object atomically (readers see all of it or none), durable
        when this returns. ``staged``: content a commit refers to only after a
        :meth:`sync`, which then makes it durable; a store may gather that work."""
        if staged:
            self._call("put", self._put_staged, check_key(key), data)
        else:
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

    def now(self, max_age: float = 60.0) -> float:
        """The store's clock: seconds since the epoch, as the store dates what it writes.

        Object ages (garbage collection's grace, renewal) are decided by this clock, never
        the local one, so a machine whose clock is off cannot misjudge them. Measured by
        writing a probe (its modification time is the store's "now") at most every
        ``max_age`` seconds, and advanced meanwhile by the local :func:`elapsed_clock`, which
        measures durations right even when the wall clock is off.
        """
        with _CLOCK_LOCK:
            measured = self._clock
            if measured is None or elapsed_clock() - measured[1] > max_age:
                before = elapsed_clock()
                stamp = self._call("now", self._now)
                # The probe was dated somewhere between the two readings: pairing it with
                # the earlier one keeps this clock from running ahead of the store's.
                measured = self._clock = (stamp, before)
            return measured[0] + (elapsed_clock() - measured[1])

    def renew(self, key: str) -> None:
        """Date an existing object "now" (the store's clock), keeping its bytes.

        Raises :class:`errors.NotFound` when it is gone. Garbage collection keeps objects
        younger than its grace; a commit about to publish an object it did not just write
        renews it first (the renewal protocol of :mod:`kvol.content`).
        """
        self._call("renew", self._renew, check_key(key))

    def delete_if_older(self, key: str, cutoff: float) -> ObjectInfo | None:
        """Delete an object only if it is still dated before ``cutoff`` (store clock),
        checked right before deleting it; returns what was deleted, None if kept or gone."""
        return self._call("delete_if_older", self._delete_if_older, check_key(key), cutoff)

    def remove_temporaries(
        self, cutoff: float, garbage: Container[str] = frozenset()
    ) -> tuple[int, int]:
        """Remove the store's own leftovers of interrupted writes dated before ``cutoff``;
        returns how many and their bytes. An object an interrupted collection had set
        aside is deleted only if it is among ``garbage`` (keys the caller knows nothing
        refers to); else it goes back."""
        return self._call("remove_temporaries", self._remove_temporaries, cutoff, garbage)

    def sync(self, keys: Collection[str] = ()) -> None:
        """Make the objects ``keys`` durable (those written ``staged``, and any found and
        reused) before anything refers to them; what was written ``staged`` may become
        readable only now.

        The commit protocol calls this with an entry's content before publishing it.
        Stores whose writes are durable when they return (S3) need not override it.
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

    def _put_staged(self, key: str, data: bytes | memoryview) -> None:
        self._put(key, data)

    @abstractmethod
    def _put_if_absent(self, key: str, data: bytes | memoryview) -> bool: ...

    @abstractmethod
    def _head(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def _list(self, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def _now(self) -> float:
        """The store's clock right now, read from something the store dates itself."""

    def _renew(self, key: str) -> None:
        # Rewriting the same bytes dates the object anew; stores do better where they can.
        self._put(key, self._get(key))

    def _delete_if_older(self, key: str, cutoff: float) -> ObjectInfo | None:
        try:
            info = self._head(key)
        except Exception as exc:
            if isinstance(exc, errors.NotFound) or isinstance(
                self._translate(exc), errors.NotFound
            ):
                return None
            raise
        if info.mtime >= cutoff:
            return None
        self._delete(key)
        return info

    def _remove_temporaries(self, cutoff: float, garbage: Container[str]) -> tuple[int, int]:
        return 0, 0

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
