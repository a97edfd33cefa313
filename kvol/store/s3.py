"""A store in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ...), through obstore.

obstore (Rust ``object_store`` underneath) gives connection pooling, SigV4 signing, the
AWS credential chain, multipart uploads and retries of transient failures with
exponential backoff and jitter, and releases the GIL while requests run, so one store is
shared by many threads. This module adds what kvol needs on top:

* ``put_if_absent`` by ``If-None-Match: *``, checked once per bucket: a server that
  ignores the header would let two writers both "create" the same log entry, so such a
  server is refused with :class:`errors.Unsupported` instead of silently racing.
* An unambiguous ``put_if_absent`` result when a request failed in flight: the object
  may have been written by the attempt whose answer was lost, so a later "already
  exists" is checked against the bytes we sent (see :meth:`S3Store._put_if_absent`).
* Throttling answered with ``429`` (some servers; AWS says ``503 SlowDown``, which
  obstore already retries) is retried here with the same backoff.
* One table translating backend failures into :mod:`kvol.errors`.
"""

from __future__ import annotations

import contextlib
import html
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Container, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

import obstore
import obstore.exceptions as oe
from obstore.store import S3Store as _ObStore

from kvol import errors
from kvol.store.base import ObjectInfo, Store
from kvol.store.s3_config import S3Settings

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

__all__ = ["S3Settings", "S3Store"]

T = TypeVar("T")

#: Objects up to this size go in one PUT; larger ones as parallel multipart parts.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
PART_CONCURRENCY = 8
#: Idle connections kept per host: enough for the 16-32 requests callers run at once.
POOL_SIZE = 64
#: Keys under this prefix (inside the store's prefix) are the store's own bookkeeping.
PROBE_PREFIX = ".kvol-probe/"

_BACKOFF_START = 0.1
_BACKOFF_MAX = 5.0

_STATUS = re.compile(r"\b(?:status code|status):? (\d{3})\b", re.IGNORECASE)
_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")
_MESSAGE = re.compile(r"<Message>(.*?)</Message>", re.DOTALL)
_REQUEST = re.compile(r"Error performing (GET|PUT|HEAD|POST|DELETE) (\S+)")
_RETRIES = re.compile(r"after (\d+) retries")
_HTTP_KIND = re.compile(r"HttpError \{\s*kind: (\w+)")
_HTTP_KINDS = {
    "Connect": "could not connect",
    "Timeout": "timed out",
    "Interrupted": "connection lost before the answer",
    "Request": "request failed to send",
    "Decode": "answer could not be read",
}
_STATUS_TEXT = re.compile(r"status code: (\d{3}[^:<]*)")
_THROTTLED_CODES = ("SlowDown", "TooManyRequests", "RequestLimitExceeded", "Throttling")
_CREDENTIAL_CODES = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
)
_TRANSPORT_WORDS = (
    "error sending request",
    "connection refused",
    "connection reset",
    "connection closed",
    "broken pipe",
    "timed out",
    "timeout",
    "dns error",
    "incomplete message",
    "error decoding response body",
    "error reading a body",
    "unexpected eof",
)

# Conditional-write support is a property of the server, found once per process.
_CONDITIONAL: dict[tuple[str | None, str], bool] = {}
_CONDITIONAL_LOCK = threading.Lock()


def _status(message: str) -> int | None:
    found = _STATUS.search(message)
    return int(found.group(1)) if found else None


def _code(message: str) -> str | None:
    found = _CODE.search(message)
    return found.group(1) if found else None


def _is_throttled(exc: Exception) -> bool:
    message = str(exc)
    return _status(message) == 429 or _code(message) in _THROTTLED_CODES


def _is_transient(exc: Exception) -> bool:
    """A failure after which the same request may succeed (and may have taken effect)."""
    if isinstance(exc, errors.StoreUnavailable):
        return True
    if not isinstance(exc, oe.BaseError) or isinstance(
        exc,
        oe.NotFoundError
        | oe.AlreadyExistsError
        | oe.PreconditionError
        | oe.PermissionDeniedError
        | oe.UnauthenticatedError,
    ):
        return False
    message = str(exc)
    status = _status(message)
    if status is not None:
        return status >= 500 or status in (408, 429)
    lowered = message.lower()
    return any(word in lowered for word in _TRANSPORT_WORDS)


class _Backoff:
    """Exponential backoff with full jitter, bounded by a deadline."""

    def __init__(self, deadline_seconds: float, attempts: int) -> None:
        self.deadline = time.monotonic() + deadline_seconds
        self.left = attempts
        self.delay = _BACKOFF_START

    def wait(self) -> bool:
        """Sleep before the next attempt; False when no attempt is left."""
        if self.left <= 0:
            return False
        pause = random.uniform(0, self.delay)
        if time.monotonic() + pause > self.deadline:
            return False
        self.left -= 1
        time.sleep(pause)
        self.delay = min(self.delay * 2, _BACKOFF_MAX)
        return True


class S3Store(Store):
    kind = "s3"

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._store = self._open(settings, retries=settings.max_retries)
        # Conditional writes retry here, not in obstore: after a lost answer, a retried
        # create that finds the key taken must check whose bytes are there.
        self._once = self._open(settings, retries=0)
        self._conditional_key = (settings.endpoint, settings.bucket)

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        return cls(S3Settings.from_url(url))

    @property
    def url(self) -> str:
        return self.settings.url

    @staticmethod
    def _open(settings: S3Settings, *, retries: int) -> _ObStore:
        config: S3Config = {
            "region": settings.region,
            "virtual_hosted_style_request": not settings.path_style,
            "conditional_put": "etag",
        }
        if settings.endpoint:
            config["endpoint"] = settings.endpoint
        # Raises before anything is sent when no source has credentials: the client's own
        # chain would end at the instance metadata address (see s3_config).
        source = settings.credential_source(os.environ)
        if source == "anonymous":
            config["skip_signature"] = True
        if settings.access_key_id and settings.secret_access_key:
            config["access_key_id"] = settings.access_key_id
            config["secret_access_key"] = settings.secret_access_key
            if settings.session_token:
                config["session_token"] = settings.session_token
        elif settings.web_identity_token_file and settings.role_arn:
            config["web_identity_token_file"] = settings.web_identity_token_file
            config["role_arn"] = settings.role_arn
        # Otherwise the client reads the same ambient variables credential_source found.
        client: ClientConfig = {
            "allow_http": bool(settings.endpoint and settings.endpoint.startswith("http://")),
            "connect_timeout": timedelta(seconds=settings.connect_timeout),
            "timeout": timedelta(seconds=settings.timeout),
            "pool_max_idle_per_host": str(POOL_SIZE),
            "pool_idle_timeout": timedelta(seconds=60),
        }
        retry: RetryConfig = {
            "max_retries": retries,
            "retry_timeout": timedelta(seconds=settings.retry_timeout),
            "backoff": {
                "init_backoff": timedelta(seconds=_BACKOFF_START),
                "max_backoff": timedelta(seconds=_BACKOFF_MAX),
                "base": 2,
            },
        }
        return _ObStore(
            settings.bucket,
            prefix=settings.prefix.rstrip("/") or None,
            config=config,
            client_options=client,
            retry_config=retry,
        )

    def _throttled(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying answers that ask us to slow down (obstore retries 5xx)."""
        backoff = _Backoff(self.settings.retry_timeout, self.settings.max_retries)
        while True:
            try:
                return fn()
            except oe.BaseError as exc:
                if not _is_throttled(exc) or not backoff.wait():
                    raise

    # -- reads --------------------------------------------------------------------------

    def _get(self, key: str) -> bytes:
        return self._throttled(lambda: bytes(obstore.get(self._store, key).bytes()))

    def _get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            return self._throttled(
                lambda: bytes(obstore.get_range(self._store, key, start=start, length=length))
            )
        except oe.BaseError as exc:
            # A range that ends past the object is answered with what exists; one that
            # starts at or past its end is refused (416). Both mean "the object ended".
            if _status(str(exc)) != 416:
                raise
            if start >= self._head(key).size:
                return b""
            raise

    def _head(self, key: str) -> ObjectInfo:
        meta = self._throttled(lambda: obstore.head(self._store, key))
        return ObjectInfo(key, meta["size"], meta["last_modified"].timestamp())

    def _list(self, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        stream = obstore.list(
            self._store,
            prefix=prefix.rstrip("/") or None,
            offset=start_after,
            chunk_size=1000,
        )
        for chunk in stream:
            for meta in chunk:
                key = meta["path"]
                if key.startswith(PROBE_PREFIX):
                    continue
                yield ObjectInfo(key, meta["size"], meta["last_modified"].timestamp())

    # -- writes -------------------------------------------------------------------------

    def _put(self, key: str, data: bytes | memoryview) -> None:
        size = len(data)
        self._throttled(
            lambda: obstore.put(
                self._store,
                key,
                data,
                use_multipart=size > MULTIPART_THRESHOLD,
                chunk_size=PART_SIZE,
                max_concurrency=PART_CONCURRENCY,
            )
        )

    def _put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        self._require_conditional_writes()
        backoff = _Backoff(self.settings.retry_timeout, self.settings.max_retries)
        # True once an attempt failed without a clear answer: it may have written the key.
        uncertain = False
        while True:
            try:
                obstore.put(self._once, key, data, mode="create", use_multipart=False)
                return True
            except (oe.AlreadyExistsError, oe.PreconditionError):
                if not uncertain:
                    return False
                # Our lost attempt may be what is there. Bytes equal to ours are ours:
                # callers make what they create unique (writer id, time) or content-named.
                try:
                    return self._get(key) == bytes(data)
                except errors.NotFound:
                    continue  # deleted in between: try again
            except oe.BaseError as exc:
                if not _is_transient(exc) or not backoff.wait():
                    raise
                uncertain = True

    def _delete(self, key: str) -> None:
        self._throttled(lambda: obstore.delete(self._store, key))

    # -- the store's clock and renewals -------------------------------------------------

    def _now(self) -> float:
        # LastModified of a probe is the server's clock (to the second; a reading up to a
        # second behind only makes ages look younger, which keeps more).
        key = f"{PROBE_PREFIX}clock-{secrets.token_hex(16)}"
        self._throttled(lambda: obstore.put(self._store, key, b"", use_multipart=False))
        try:
            return self._head(key).mtime
        finally:
            with contextlib.suppress(oe.BaseError):
                obstore.delete(self._store, key)

    def _remove_temporaries(self, cutoff: float, garbage: Container[str]) -> tuple[int, int]:
        """Probes and renewal copies left by killed processes. (Parts of multipart uploads
        a killed process left are invisible through obstore, which can neither list nor
        abort them: a bucket lifecycle rule "abort incomplete multipart uploads" reclaims
        them.)"""
        count = size = 0
        for chunk in obstore.list(self._store, prefix=PROBE_PREFIX.rstrip("/"), chunk_size=1000):
            for meta in chunk:
                if meta["last_modified"].timestamp() >= cutoff:
                    continue
                self._delete(meta["path"])
                count += 1
                size += meta["size"]
        return count, size

    def _renew(self, key: str) -> None:
        # A server-side copy dates the object anew without moving its bytes through here;
        # S3 refuses to copy an object onto itself unchanged, hence the detour.
        aside = f"{PROBE_PREFIX}renew-{secrets.token_hex(16)}"
        self._throttled(lambda: obstore.copy(self._store, key, aside))
        try:
            self._throttled(lambda: obstore.copy(self._store, aside, key))
        finally:
            with contextlib.suppress(oe.BaseError):
                obstore.delete(self._store, aside)

    # -- conditional writes -------------------------------------------------------------

    def _require_conditional_writes(self) -> None:
        with _CONDITIONAL_LOCK:
            honoured = _CONDITIONAL.get(self._conditional_key)
            if honoured is None:
                honoured = self._probe_conditional_writes()
                _CONDITIONAL[self._conditional_key] = honoured
        if not honoured:
            raise errors.Unsupported(
                f"the S3 server of {self.settings.location} does not honour conditional "
                "writes (If-None-Match: *): a second create of the same key succeeded. "
                "kvol publishes commits with them, so two writers could overwrite each "
                "other's commit. Use a server that supports them (AWS S3, MinIO, Ceph RGW "
                "18 or newer, ...)."
            )

    def _probe_conditional_writes(self) -> bool:
        """Create one unique key twice; a server that honours the condition refuses the second."""
        key = f"{PROBE_PREFIX}{secrets.token_hex(16)}"
        try:
            obstore.put(self._store, key, b"probe", mode="create", use_multipart=False)
            try:
                obstore.put(self._store, key, b"probe", mode="create", use_multipart=False)
            except (oe.AlreadyExistsError, oe.PreconditionError):
                return True
            except oe.NotSupportedError:
                return False
            except oe.BaseError as exc:
                if _status(str(exc)) == 501 or _code(str(exc)) == "NotImplemented":
                    return False
                raise
            return False
        except oe.NotSupportedError:
            return False
        finally:
            # Listings hide probe keys, and a bucket may forbid deletes.
            with contextlib.suppress(oe.BaseError):
                obstore.delete(self._store, key)

    # -- errors -------------------------------------------------------------------------

    def _translate(self, exc: Exception) -> errors.KvolError:
        where = self.settings.location
        message = str(exc)
        code = _code(message)
        status = _status(message)
        if code == "NoSuchBucket":
            return errors.NotFound(
                f"S3 {where} does not exist: create it, or fix the bucket in the store URL"
            )
        if isinstance(exc, oe.NotFoundError) or code == "NoSuchKey" or status == 404:
            return errors.NotFound(f"no such object in S3 {where}: {_brief(message)}")
        if code in _CREDENTIAL_CODES or isinstance(exc, oe.UnauthenticatedError):
            return errors.PermissionDenied(
                f"S3 {where} rejected the credentials ({code or 'unauthenticated'}): check "
                "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN"
            )
        if isinstance(exc, oe.PermissionDeniedError) or code == "AccessDenied" or status == 403:
            return errors.PermissionDenied(
                f"S3 {where} denied access ({code or 'forbidden'}): the credentials lack "
                f"permission for this operation: {_brief(message)}"
            )
        if isinstance(exc, oe.AlreadyExistsError | oe.PreconditionError):
            return errors.Conflict(f"{self.url}: {_brief(message)}")
        if isinstance(exc, oe.NotSupportedError) or status == 501:
            return errors.Unsupported(
                f"S3 {where} does not support an operation kvol needs: {_brief(message)}"
            )
        if _is_transient(exc):
            return errors.StoreUnavailable(f"S3 {where} is unavailable: {_brief(message)}")
        return errors.StoreError(f"S3 {where}: {_brief(message)}")


def _brief(message: str) -> str:
    """The request, the answer (or why none came) and the retries, on one line.

    obstore's messages hold the whole response body and a debug dump; keep what a user
    can act on.
    """
    parts = []
    request = _REQUEST.search(message)
    if request:
        parts.append(f"{request.group(1)} {request.group(2)}")
    status = _STATUS_TEXT.search(message)
    if status:
        parts.append(status.group(1).strip())
        code = _code(message)
        if code:
            parts.append(code)
        server = _MESSAGE.search(message)
        if server:
            parts.append(html.unescape(server.group(1)))
    else:
        kind = _HTTP_KIND.search(message)
        if kind and kind.group(1) in _HTTP_KINDS:
            parts.append(_HTTP_KINDS[kind.group(1)])
        else:
            first = message.strip().splitlines()[0] if message.strip() else ""
            parts.append(first.rsplit(" - ", 1)[-1].strip() or type(message).__name__)
    text = ": ".join(parts)
    retries = _RETRIES.search(message)
    if retries and retries.group(1) != "0":
        text += f" (after {retries.group(1)} retries)"
    return text[:500]
