"""Parsing Volume and VolumeBackend specs: defaults, and clear errors for bad input."""

from __future__ import annotations

import pytest

from kvol.errors import InvalidArgument
from kvol.model import Limits
from kvol.operator.resources import BackendSpec, VolumeSpec, parse_bytes


def test_volume_defaults() -> None:
    spec = VolumeSpec.parse({})
    assert (spec.version, spec.backend, spec.reclaim_policy) == (2, "", "Retain")
    assert spec.autocommit_interval_seconds == 5
    assert spec.access_modes == ("ReadWriteMany",)
    assert spec.limits is None


def test_volume_limits_accept_counts_and_quantities() -> None:
    spec = VolumeSpec.parse(
        {"limits": {"maxFiles": 10, "maxBytes": "1Gi", "maxFileSize": 4096}, "version": 1}
    )
    assert spec.limits == Limits(max_files=10, max_bytes=1 << 30, max_file_size=4096)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"version": 3}, "spec.version"),
        ({"reclaimPolicy": "Keep"}, "reclaimPolicy"),
        ({"limits": {"maxFiles": 0}}, "maxFiles"),
        ({"limits": {"maxBytes": "lots"}}, "maxBytes"),
        ({"limits": {"maxInodes": 3}}, "maxInodes"),
        ({"autocommitIntervalSeconds": -1}, "autocommitIntervalSeconds"),
        ({"accessModes": ["ReadWriteSometimes"]}, "accessModes"),
    ],
)
def test_volume_spec_errors_name_the_field(spec: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        VolumeSpec.parse(spec)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1), ("1Ki", 1024), ("2M", 2_000_000), ("1.5Gi", 3 << 29), ("10", 10)],
)
def test_parse_bytes(value: object, expected: int) -> None:
    assert parse_bytes(value, "x") == expected


@pytest.mark.parametrize("value", [0, -1, True, "1 GB", "", None])
def test_parse_bytes_refuses(value: object) -> None:
    with pytest.raises(InvalidArgument):
        parse_bytes(value, "x")


def test_filesystem_backend() -> None:
    spec = BackendSpec.parse({"type": "filesystem", "filesystem": {"path": "/srv/kvol"}})
    assert spec.filesystem is not None and spec.filesystem.path == "/srv/kvol"
    assert not spec.default


def test_default_by_field_or_annotation() -> None:
    fs = {"type": "filesystem", "filesystem": {"path": "/x"}}
    assert BackendSpec.parse({**fs, "default": True}).default
    assert BackendSpec.parse(fs, {"kvol.dev/default-backend": "true"}).default
    assert not BackendSpec.parse(fs, {"kvol.dev/default-backend": "false"}).default


def test_s3_backend() -> None:
    spec = BackendSpec.parse(
        {
            "type": "s3",
            "s3": {
                "bucket": "vols",
                "prefix": "/team/",
                "endpoint": "http://minio:9000",
                "credentialsSecretRef": {"name": "creds"},
            },
        }
    )
    assert spec.s3 is not None
    assert (spec.s3.bucket, spec.s3.prefix, spec.s3.path_style) == ("vols", "team", None)
    assert spec.s3.credentials is not None and spec.s3.credentials.name == "creds"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "filesystem", "filesystem": {"path": "relative"}}, "absolute"),
        ({"type": "filesystem", "filesystem": {"path": "/x"}, "s3": {"bucket": "b"}}, "s3"),
        ({"type": "s3", "s3": {}}, "bucket"),
        ({"type": "s3", "s3": {"bucket": "b", "endpoint": "minio:9000"}}, "endpoint"),
        ({"type": "nfs"}, "spec.type"),
    ],
)
def test_backend_errors(spec: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        BackendSpec.parse(spec)
