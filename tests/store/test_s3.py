"""The S3 store's own behaviour: configuration, errors, multipart, prefixes (real MinIO)."""

from __future__ import annotations

import time

import pytest

from kvol import errors
from kvol.store import open_store
from kvol.store.s3 import PROBE_PREFIX, S3Settings, S3Store
from tests.minio import ACCESS_KEY, SECRET_KEY, MinioServer, free_port

ENV = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "very-secret-value"}

# -- configuration (no server) -------------------------------------------------------------


def test_url_with_every_option() -> None:
    s = S3Settings.from_url(
        "s3://my-bucket/some/prefix?endpoint=http://127.0.0.1:9000&region=eu-west-1"
        "&path_style=false&retries=3&retry_timeout=7.5&connect_timeout=2&timeout=30",
        ENV,
    )
    assert (s.bucket, s.prefix, s.endpoint, s.region) == (
        "my-bucket",
        "some/prefix/",
        "http://127.0.0.1:9000",
        "eu-west-1",
    )
    assert s.path_style is False
    assert (s.max_retries, s.retry_timeout, s.connect_timeout, s.timeout) == (3, 7.5, 2, 30)
    assert s.access_key_id == "AKIDEXAMPLE"
    # The canonical URL parses back to the same settings.
    assert S3Settings.from_url(s.url, ENV) == s


def test_environment_supplies_what_the_url_leaves_out() -> None:
    env = {
        **ENV,
        "AWS_SESSION_TOKEN": "tok",
        "AWS_ENDPOINT_URL": "https://s3.example.test/",
        "AWS_DEFAULT_REGION": "ap-south-1",
    }
    s = S3Settings.from_url("s3://b-1", env)
    assert s.endpoint == "https://s3.example.test"
    assert s.region == "ap-south-1"
    assert s.path_style is True  # a custom endpoint defaults to path-style
    assert s.prefix == ""
    assert s.session_token == "tok"
    # The service-specific endpoint and AWS_REGION win over the general ones; the URL wins
    # over both.
    env |= {"AWS_ENDPOINT_URL_S3": "http://10.0.0.1:9000", "AWS_REGION": "us-west-2"}
    assert S3Settings.from_url("s3://b-1", env).endpoint == "http://10.0.0.1:9000"
    assert S3Settings.from_url("s3://b-1", env).region == "us-west-2"
    assert S3Settings.from_url("s3://b-1?region=eu-north-1", env).region == "eu-north-1"


def test_aws_without_endpoint_uses_virtual_hosted_requests() -> None:
    s = S3Settings.from_url("s3://bucket/p", ENV)
    assert s.endpoint is None and s.path_style is False
    assert s.region == "us-east-1"


def test_url_never_shows_credentials() -> None:
    env = ENV | {"AWS_SESSION_TOKEN": "SESSION-TOKEN-XYZ"}
    s = S3Settings.from_url("s3://bucket/p?endpoint=http://127.0.0.1:9000", env)
    for text in (s.url, repr(s), repr(S3Store(s)), str(s)):
        for secret in ("very-secret-value", "AKIDEXAMPLE", "SESSION-TOKEN-XYZ"):
            assert secret not in text


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("s3://key:secret@bucket/p", "must not carry credentials"),
        ("s3:///p", "needs a bucket"),
        ("s3://bucket/p?colour=blue", "unknown S3 store option"),
        ("s3://bucket/p?endpoint=ftp://host", "http:// or https://"),
        ("s3://bucket/p?endpoint=http://k:s@host", "must not carry credentials"),
        ("s3://bucket/p?path_style=maybe", "true or false"),
        ("s3://bucket/p?retries=-1", "must not be negative"),
        ("s3://bucket/p?timeout=soon", "must be a number"),
        ("s3://bucket/a//b", "invalid"),
        ("s3://bu/cket?x", "unknown"),
        ("file:///tmp/x", "not an S3 store URL"),
    ],
)
def test_bad_urls_are_refused_with_a_reason(url: str, words: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=words):
        S3Settings.from_url(url, ENV)


def test_half_a_credential_is_refused() -> None:
    with pytest.raises(errors.InvalidArgument, match="both"):
        S3Settings.from_url("s3://bucket", {"AWS_ACCESS_KEY_ID": "only-the-id"})


def test_open_store_picks_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    store = open_store("s3://bucket/pre?endpoint=http://127.0.0.1:1")
    assert isinstance(store, S3Store)
    assert store.kind == "s3"
    assert store.url.startswith("s3://bucket/pre/?endpoint=http://127.0.0.1:1")


# -- against MinIO -------------------------------------------------------------------------


@pytest.mark.s3
def test_missing_bucket_is_not_found_naming_the_bucket(minio: MinioServer) -> None:
    store = minio.store("no-such-bucket-here")
    with pytest.raises(errors.NotFound, match=r"'no-such-bucket-here'.*does not exist"):
        store.put("k", b"x")
    with pytest.raises(errors.NotFound, match="does not exist"):
        list(store.list())
    with pytest.raises(errors.NotFound, match="does not exist"):
        store.get("k")


@pytest.mark.s3
def test_wrong_secret_is_a_credentials_error(minio: MinioServer, s3_bucket: str) -> None:
    store = minio.store(s3_bucket, secret_access_key="not-the-secret")
    with pytest.raises(errors.PermissionDenied, match=r"rejected the credentials.*Signature"):
        store.put("k", b"x")
    with pytest.raises(errors.PermissionDenied, match="AWS_SECRET_ACCESS_KEY"):
        list(store.list())


@pytest.mark.s3
def test_unknown_access_key_is_a_credentials_error(minio: MinioServer, s3_bucket: str) -> None:
    store = minio.store(s3_bucket, access_key_id="nobody-at-all")
    with pytest.raises(errors.PermissionDenied, match="InvalidAccessKeyId"):
        store.get("k")


@pytest.mark.s3
def test_anonymous_access_is_denied(minio: MinioServer, s3_bucket: str) -> None:
    store = minio.store(s3_bucket, anonymous=True, access_key_id=None, secret_access_key=None)
    with pytest.raises(errors.PermissionDenied, match="denied access"):
        store.put("k", b"x")


@pytest.mark.s3
def test_errors_keep_the_backend_error_as_cause(minio: MinioServer, s3_bucket: str) -> None:
    store = minio.store(s3_bucket)
    with pytest.raises(errors.NotFound) as caught:
        store.get("absent")
    assert caught.value.__cause__ is not None
    # One line a user can act on, not the server's XML.
    assert "\n" not in str(caught.value)
    assert "<?xml" not in str(caught.value)


def test_nothing_listening_is_unavailable_and_fails_fast() -> None:
    settings = S3Settings(
        bucket="bucket",
        endpoint=f"http://127.0.0.1:{free_port()}",
        access_key_id="id",
        secret_access_key="secret",
        retry_timeout=1.0,
        max_retries=3,
    )
    store = S3Store(settings)
    started = time.monotonic()
    with pytest.raises(errors.StoreUnavailable) as caught:
        store.get("k")
    assert caught.value.retryable
    with pytest.raises(errors.StoreUnavailable):
        store.put_if_absent("k", b"x")
    assert time.monotonic() - started < 15


@pytest.mark.s3
def test_prefixes_isolate_stores_in_one_bucket(minio: MinioServer, s3_bucket: str) -> None:
    one = minio.store(s3_bucket, "one/")
    two = minio.store(s3_bucket, "two/")
    root = minio.store(s3_bucket)
    one.put("k", b"1")
    two.put("k", b"2")
    assert [i.key for i in one.list()] == ["k"]
    assert one.get("k") == b"1" and two.get("k") == b"2"
    assert [i.key for i in root.list()] == ["one/k", "two/k"]
    assert one.put_if_absent("only-one", b"x")
    assert two.put_if_absent("only-one", b"x")


@pytest.mark.s3
def test_large_object_goes_up_in_parallel_parts(
    minio: MinioServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kvol.store.s3 as s3

    # Lower the thresholds so a modest object takes the multipart path (5 MiB is S3's
    # smallest part).
    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", 6 * 1024 * 1024)
    monkeypatch.setattr(s3, "PART_SIZE", 5 * 1024 * 1024)
    store = minio.store(s3_bucket)
    payload = bytes(i % 253 for i in range(17 * 1024 * 1024 + 123))
    store.put("big", payload)
    assert store.head("big").size == len(payload)
    assert store.get("big") == payload
    assert store.get_range("big", 10 * 1024 * 1024, 100) == payload[10 * 1024 * 1024 :][:100]


@pytest.mark.s3
def test_the_conditional_write_probe_leaves_nothing_visible(
    minio: MinioServer, s3_bucket: str
) -> None:
    store = minio.store(s3_bucket, "p/")
    assert store.put_if_absent("k", b"x")
    assert [i.key for i in store.list()] == ["k"]
    raw = minio.store(s3_bucket)
    assert not [i.key for i in raw.list() if PROBE_PREFIX in i.key]


@pytest.mark.s3
def test_store_from_environment_like_the_cli(
    minio: MinioServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_ENDPOINT_URL", minio.endpoint)
    store = open_store(f"s3://{s3_bucket}/vols")
    store.put("x", b"y")
    assert minio.store(s3_bucket, "vols/").get("x") == b"y"
