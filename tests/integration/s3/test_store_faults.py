"""The S3 store against a real MinIO that throttles, fails, stalls and loses answers."""

from __future__ import annotations

import time

import pytest

from kvol import errors
from kvol.store.s3 import S3Store
from tests.integration.s3.proxy import Proxy, Seen
from tests.minio import MinioServer

pytestmark = pytest.mark.s3


def through(proxy: Proxy, minio: MinioServer, bucket: str, **overrides: object) -> S3Store:
    return minio.store(bucket, "p/", endpoint=proxy.endpoint, **overrides)


def is_put(seen: Seen) -> bool:
    return seen.method == "PUT" and not seen.conditional


def test_every_operation_survives_bursts_of_503(
    proxy: Proxy, minio: MinioServer, s3_bucket: str
) -> None:
    store = through(proxy, minio, s3_bucket)
    store.put("warm", b"x")  # the first conditional write probes the server; keep it out
    assert store.put_if_absent("warm-probe", b"x")
    for round_ in range(3):
        proxy.faults.fail(2, status=503)
        store.put(f"k{round_}", b"data")
        proxy.faults.fail(2, status=503)
        assert store.get(f"k{round_}") == b"data"
        proxy.faults.fail(2, status=503)
        assert store.put_if_absent(f"log/{round_}", b"entry")
        proxy.faults.fail(2, status=503)
        assert store.put_if_absent(f"log/{round_}", b"other") is False
        proxy.faults.fail(2, status=503)
        assert [i.key for i in store.list("log/")] == [f"log/{r}" for r in range(round_ + 1)]
        proxy.faults.fail(2, status=503)
        assert store.get_range(f"k{round_}", 1, 2) == b"at"
    assert proxy.faults.injected["fail"] == 3 * 6 * 2


def test_throttling_with_429_is_retried(proxy: Proxy, minio: MinioServer, s3_bucket: str) -> None:
    store = through(proxy, minio, s3_bucket)
    proxy.faults.fail(3, status=429)
    store.put("k", b"v")
    proxy.faults.fail(3, status=429)
    assert store.get("k") == b"v"
    assert proxy.faults.injected["fail"] == 6


def test_client_errors_are_not_retried(proxy: Proxy, minio: MinioServer, s3_bucket: str) -> None:
    store = through(proxy, minio, s3_bucket)
    before = len(proxy.faults.seen)
    with pytest.raises(errors.NotFound):
        store.get("missing")
    assert len(proxy.faults.seen) - before == 1
    wrong = through(proxy, minio, s3_bucket, secret_access_key="wrong-secret")
    before = len(proxy.faults.seen)
    with pytest.raises(errors.PermissionDenied):
        wrong.put("k", b"v")
    assert len(proxy.faults.seen) - before == 1


def test_a_server_that_keeps_failing_is_unavailable_in_bounded_time(
    proxy: Proxy, minio: MinioServer, s3_bucket: str
) -> None:
    store = through(proxy, minio, s3_bucket, retry_timeout=2.0, max_retries=4)
    store.put("k", b"v")
    proxy.faults.fail(None, status=503)
    started = time.monotonic()
    for call in (lambda: store.get("k"), lambda: store.put("k2", b"v")):
        with pytest.raises(errors.StoreUnavailable, match="unavailable") as caught:
            call()
        assert caught.value.retryable
    assert time.monotonic() - started < 20


def test_slow_responses_are_waited_for(proxy: Proxy, minio: MinioServer, s3_bucket: str) -> None:
    store = through(proxy, minio, s3_bucket)
    proxy.faults.delay(0.3)
    started = time.monotonic()
    store.put("slow", b"v" * 1000)
    assert store.get("slow") == b"v" * 1000
    assert store.put_if_absent("slow-log", b"e")
    assert time.monotonic() - started >= 0.9


def test_a_read_that_outlives_the_timeout_is_retried(
    proxy: Proxy, minio: MinioServer, s3_bucket: str
) -> None:
    store = through(proxy, minio, s3_bucket, timeout=1.0)
    store.put("k", b"v")
    proxy.faults.delay(2.5, times=1, match=lambda s: s.method == "GET")
    assert store.get("k") == b"v"
    assert proxy.faults.injected["delay"] == 1
    gets = [s for s in proxy.faults.seen if s.method == "GET"]
    assert len(gets) == 2


def test_a_lost_answer_to_our_create_still_reports_created(
    proxy: Proxy, minio: MinioServer, s3_bucket: str
) -> None:
    store = through(proxy, minio, s3_bucket)
    assert store.put_if_absent("probe-first", b"x")
    # The server writes log/1, the answer is lost; the retry meets "exists" and must
    # recognise our own bytes rather than report that another writer took the position.
    proxy.faults.lose_answer(1, match=lambda s: s.conditional)
    assert store.put_if_absent("log/1", b"writer A, commit 1") is True
    assert store.get("log/1") == b"writer A, commit 1"
    assert proxy.faults.injected["lose"] == 1


def test_a_lost_answer_does_not_hide_another_writers_create(
    proxy: Proxy, minio: MinioServer, s3_bucket: str
) -> None:
    direct = minio.store(s3_bucket, "p/")
    store = through(proxy, minio, s3_bucket)
    assert store.put_if_absent("probe-first", b"x")
    assert direct.put_if_absent("log/1", b"writer B")
    proxy.faults.lose_answer(1, match=lambda s: s.conditional)
    assert store.put_if_absent("log/1", b"writer A") is False
    assert store.get("log/1") == b"writer B"


def test_a_server_ignoring_conditional_writes_is_refused(
    proxy: Proxy, minio: MinioServer, s3_bucket: str
) -> None:
    proxy.faults.ignore_conditional = True
    store = through(proxy, minio, s3_bucket)
    with pytest.raises(errors.Unsupported, match=r"If-None-Match.*two writers"):
        store.put_if_absent("log/1", b"x")
    # Refused every time, without writing anything, and without probing again.
    requests = len(proxy.faults.seen)
    with pytest.raises(errors.Unsupported):
        store.put_if_absent("log/1", b"x")
    assert len(proxy.faults.seen) == requests
    assert not store.exists("log/1")
    # Everything else still works: only the commit protocol needs the condition.
    store.put("blob", b"b")
    assert store.get("blob") == b"b"


def test_the_conditional_write_check_runs_once_per_server(
    proxy: Proxy, minio: MinioServer, s3_bucket: str
) -> None:
    first = through(proxy, minio, s3_bucket)
    assert first.put_if_absent("a", b"1")
    probes = sum(1 for s in proxy.faults.seen if ".kvol-probe" in s.path)
    assert probes >= 2  # created, then refused
    second = through(proxy, minio, s3_bucket)
    assert second.put_if_absent("b", b"2")
    assert sum(1 for s in proxy.faults.seen if ".kvol-probe" in s.path) == probes
