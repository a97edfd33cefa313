"""VolumeBackend objects -> open kvol stores, with credentials from Secrets.

Stores are opened once per backend and reused while the backend's spec and credentials
stay the same (a store holds connection pools). Reachability is checked by a cheap
request that must answer "not found": anything else means the backend cannot serve.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kvol import errors
from kvol.operator.resources import BackendSpec
from kvol.store import FilesystemStore, Store
from kvol.store.s3_config import DEFAULT_REGION

#: Secret keys for S3 credentials, in our spelling and in the AWS environment spelling.
_KEY_ID = ("accessKeyId", "AWS_ACCESS_KEY_ID")
_SECRET = ("secretAccessKey", "AWS_SECRET_ACCESS_KEY")
_TOKEN = ("sessionToken", "AWS_SESSION_TOKEN")
#: The object the reachability probe asks for; it never exists.
_PROBE_KEY = "kvol-probe"


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never print a secret
        return f"Credentials(access_key_id={self.access_key_id!r}, ...)"


def credentials_from_secret(secret: Mapping[str, Any], where: str) -> Credentials:
    """S3 credentials from a Secret object (``data`` base64, or ``stringData``)."""
    values: dict[str, str] = {}
    for key, raw in (secret.get("data") or {}).items():
        values[key] = base64.b64decode(raw).decode()
    values.update(secret.get("stringData") or {})

    def pick(keys: tuple[str, ...]) -> str | None:
        for key in keys:
            if values.get(key):
                return values[key].strip()
        return None

    key_id, secret_key = pick(_KEY_ID), pick(_SECRET)
    if not key_id or not secret_key:
        raise errors.InvalidArgument(
            f"Secret {where} must hold {_KEY_ID[0]} and {_SECRET[0]} "
            f"(or {_KEY_ID[1]} and {_SECRET[1]})"
        )
    return Credentials(key_id, secret_key, pick(_TOKEN))


def store_url(spec: BackendSpec) -> str:
    """Where a backend keeps its data, without credentials (shown in status)."""
    if spec.filesystem is not None:
        return f"file://{spec.filesystem.path}"
    assert spec.s3 is not None
    prefix = f"/{spec.s3.prefix}" if spec.s3.prefix else ""
    return f"s3://{spec.s3.bucket}{prefix}"


def open_backend_store(spec: BackendSpec, credentials: Credentials | None) -> Store:
    """Open the store of a backend. Raises :class:`errors.StoreUnavailable` if it cannot be."""
    if spec.filesystem is not None:
        path = spec.filesystem.path
        # A missing directory is an unmounted share, not an empty store: never create it.
        if not os.path.isdir(path):
            raise errors.StoreUnavailable(
                f"filesystem backend path {path} does not exist or is not mounted here"
            )
        return FilesystemStore(path)
    assert spec.s3 is not None
    from kvol.store.s3 import S3Settings, S3Store

    s3 = spec.s3
    settings = S3Settings(
        bucket=s3.bucket,
        prefix=f"{s3.prefix}/" if s3.prefix else "",
        endpoint=s3.endpoint,
        region=s3.region or DEFAULT_REGION,
        # Absent: path style for a named endpoint (MinIO, Ceph), virtual-hosted for AWS.
        path_style=s3.path_style if s3.path_style is not None else s3.endpoint is not None,
        access_key_id=credentials.access_key_id if credentials else None,
        secret_access_key=credentials.secret_access_key if credentials else None,
        session_token=credentials.session_token if credentials else None,
        # An operator must notice an outage in seconds, not after a minute of retries;
        # the next reconciliation is its retry.
        max_retries=2,
        retry_timeout=5.0,
        connect_timeout=3.0,
        timeout=30.0,
    )
    return S3Store(settings)


def probe(store: Store, spec: BackendSpec) -> None:
    """Raise :class:`errors.StoreUnavailable` (or another store error) if ``store`` cannot serve."""
    if spec.filesystem is not None and not os.path.isdir(spec.filesystem.path):
        raise errors.StoreUnavailable(
            f"filesystem backend path {spec.filesystem.path} does not exist or is not mounted here"
        )
    try:
        store.head(_PROBE_KEY)
    except errors.NotFound:
        return


@dataclass
class _Entry:
    spec: BackendSpec
    credentials: Credentials | None
    store: Store


class StoreCache:
    """One open store per backend name, replaced when its spec or credentials change."""

    def __init__(self, opener: Callable[[BackendSpec, Credentials | None], Store]) -> None:
        self._opener = opener
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, name: str, spec: BackendSpec, credentials: Credentials | None) -> Store:
        with self._lock:
            entry = self._entries.get(name)
            if entry and entry.spec == spec and entry.credentials == credentials:
                return entry.store
        store = self._opener(spec, credentials)
        with self._lock:
            old = self._entries.get(name)
            self._entries[name] = _Entry(spec, credentials, store)
        if old is not None and old.store is not store:
            old.store.close()
        return store

    def peek(self, name: str, spec: BackendSpec) -> Store | None:
        """The store open for ``name`` if its spec is still ``spec`` (credentials unchecked)."""
        with self._lock:
            entry = self._entries.get(name)
        return entry.store if entry is not None and entry.spec == spec else None

    def drop(self, name: str) -> None:
        with self._lock:
            entry = self._entries.pop(name, None)
        if entry is not None:
            entry.store.close()

    def close(self) -> None:
        with self._lock:
            entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            entry.store.close()
