"""Stores: where volumes live. ``open_store(url)`` picks the implementation."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from kvol import errors
from kvol.store.base import ObjectInfo, Store
from kvol.store.fs import FilesystemStore

__all__ = ["FilesystemStore", "ObjectInfo", "Store", "default_store_url", "open_store"]

#: Environment variable naming the store the CLI and SDK use when none is given.
STORE_ENV = "KVOL_STORE"


def default_store_url() -> str:
    """``$KVOL_STORE``, else a directory under the user's data home (the embedded default)."""
    url = os.environ.get(STORE_ENV)
    if url:
        return url
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"file://{Path(data_home) / 'kvol' / 'store'}"


def open_store(url: str | None = None) -> Store:
    """Open the store at ``url``: ``file:///dir``, a plain path, or ``s3://bucket/prefix``."""
    url = url or default_store_url()
    scheme = urlparse(url).scheme
    if scheme in ("", "file"):
        return FilesystemStore.from_url(url)
    if scheme == "s3":
        from kvol.store.s3 import S3Store

        return S3Store.from_url(url)
    raise errors.InvalidArgument(
        f"unknown store URL scheme {scheme!r} in {url!r}; use file:// or s3://"
    )
