"""Backends: credentials from Secrets, opening stores, the reachability probe."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from kvol import errors
from kvol.operator import backends
from kvol.operator.resources import BackendSpec
from kvol.store import FilesystemStore, Store


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_credentials_in_either_spelling() -> None:
    ours = {"data": {"accessKeyId": _b64("AK"), "secretAccessKey": _b64("SK\n")}}
    aws = {
        "stringData": {
            "AWS_ACCESS_KEY_ID": "AK",
            "AWS_SECRET_ACCESS_KEY": "SK",
            "AWS_SESSION_TOKEN": "T",
        }
    }
    assert backends.credentials_from_secret(ours, "ns/s") == backends.Credentials("AK", "SK")
    assert backends.credentials_from_secret(aws, "ns/s") == backends.Credentials("AK", "SK", "T")


def test_credentials_missing_keys_name_the_secret() -> None:
    with pytest.raises(errors.InvalidArgument, match="kvol-system/creds"):
        backends.credentials_from_secret({"data": {"accessKeyId": _b64("x")}}, "kvol-system/creds")


def test_credentials_never_print_the_secret() -> None:
    assert "SK" not in repr(backends.Credentials("AK", "SK"))


def _fs(path: Path) -> BackendSpec:
    return BackendSpec.parse({"type": "filesystem", "filesystem": {"path": str(path)}})


def test_store_url() -> None:
    assert backends.store_url(_fs(Path("/srv/x"))) == "file:///srv/x"
    s3 = BackendSpec.parse({"type": "s3", "s3": {"bucket": "b", "prefix": "p/q"}})
    assert backends.store_url(s3) == "s3://b/p/q"


def test_missing_directory_is_unreachable_and_never_created(tmp_path: Path) -> None:
    spec = _fs(tmp_path / "unmounted")
    with pytest.raises(errors.StoreUnavailable, match="not mounted"):
        backends.open_backend_store(spec, None)
    assert not (tmp_path / "unmounted").exists()


def test_probe_sees_a_directory_vanish(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    spec = _fs(root)
    store = backends.open_backend_store(spec, None)
    backends.probe(store, spec)
    root.rename(tmp_path / "elsewhere")
    with pytest.raises(errors.StoreUnavailable):
        backends.probe(store, spec)


def test_store_cache_reuses_until_the_spec_changes(tmp_path: Path) -> None:
    opened: list[Store] = []

    def opener(spec: BackendSpec, creds: backends.Credentials | None) -> Store:
        assert spec.filesystem is not None
        store = FilesystemStore(spec.filesystem.path)
        opened.append(store)
        return store

    cache = backends.StoreCache(opener)
    a, b = _fs(tmp_path / "a"), _fs(tmp_path / "b")
    first = cache.get("x", a, None)
    assert cache.get("x", a, None) is first
    assert cache.peek("x", a) is first and cache.peek("x", b) is None
    assert cache.get("x", b, None) is not first
    assert len(opened) == 2
    cache.close()
