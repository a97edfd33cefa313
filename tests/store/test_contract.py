"""What every store promises (kvol/store/base.py), checked on each implementation."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from kvol import errors
from kvol.store import Store


def keys(store: Store, prefix: str = "", start_after: str | None = None) -> list[str]:
    return [info.key for info in store.list(prefix, start_after)]


# -- objects -------------------------------------------------------------------------------


def test_put_then_get_returns_the_same_bytes(store: Store) -> None:
    payload = bytes(range(256)) * 1000
    store.put("a/b/c", payload)
    assert store.get("a/b/c") == payload


def test_empty_object(store: Store) -> None:
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.head("empty").size == 0


def test_put_accepts_a_memoryview(store: Store) -> None:
    data = bytearray(b"0123456789")
    store.put("view", memoryview(data)[2:6])
    assert store.get("view") == b"2345"


def test_put_replaces_an_object(store: Store) -> None:
    store.put("k", b"first")
    store.put("k", b"second, longer")
    assert store.get("k") == b"second, longer"


def test_a_staged_object_is_whole_and_listed_once_synced(store: Store) -> None:
    # Before the sync, only the process that wrote it is promised to find it.
    store.put("content/x", b"staged content", staged=True)
    assert store.head("content/x").size == len(b"staged content")
    assert store.get("content/x") == b"staged content"
    store.sync(["content/x"])
    assert store.get("content/x") == b"staged content"
    assert keys(store, "content/") == ["content/x"]
    store.sync(["content/x"])  # a sync of what is named already is harmless
    assert store.get("content/x") == b"staged content"


def test_get_of_a_missing_object_is_not_found(store: Store) -> None:
    with pytest.raises(errors.NotFound):
        store.get("missing/key")
    # The builtin works too, for callers that do not know kvol's errors.
    with pytest.raises(FileNotFoundError):
        store.get("missing")


def test_keys_with_unusual_characters_round_trip(store: Store) -> None:
    names = ["with space", "ünïcödé/ключ", "plus+equals=percent%25", "tilde~and,comma"]
    for i, name in enumerate(names):
        store.put(name, str(i).encode())
    for i, name in enumerate(names):
        assert store.get(name) == str(i).encode()
    assert keys(store) == sorted(names)


@pytest.mark.parametrize("key", ["", "/abs", "trailing/", "a//b", "../up", "a/./b", "a/../b"])
def test_invalid_keys_are_refused(store: Store, key: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        store.put(key, b"x")
    with pytest.raises(errors.InvalidArgument):
        store.get(key)


# -- ranges --------------------------------------------------------------------------------


def test_get_range(store: Store) -> None:
    store.put("r", b"0123456789")
    assert store.get_range("r", 0, 3) == b"012"
    assert store.get_range("r", 4, 2) == b"45"
    assert store.get_range("r", 9, 1) == b"9"
    assert store.get_range("r", 0, 0) == b""


def test_get_range_is_cut_where_the_object_ends(store: Store) -> None:
    store.put("r", b"0123456789")
    assert store.get_range("r", 8, 100) == b"89"
    assert store.get_range("r", 10, 5) == b""
    assert store.get_range("r", 50, 5) == b""


def test_get_range_of_a_missing_object_is_not_found(store: Store) -> None:
    with pytest.raises(errors.NotFound):
        store.get_range("nope", 0, 10)


def test_get_range_refuses_negative_bounds(store: Store) -> None:
    store.put("r", b"abc")
    with pytest.raises(errors.InvalidArgument):
        store.get_range("r", -1, 2)
    with pytest.raises(errors.InvalidArgument):
        store.get_range("r", 0, -2)


def test_get_range_of_a_large_object(store: Store) -> None:
    payload = bytes(i % 251 for i in range(3 * 1024 * 1024))
    store.put("big", payload)
    assert store.get_range("big", 1_000_000, 1_500_000) == payload[1_000_000:2_500_000]


# -- put if absent -------------------------------------------------------------------------


def test_put_if_absent_creates_once(store: Store) -> None:
    assert store.put_if_absent("log/1", b"mine") is True
    assert store.put_if_absent("log/1", b"theirs") is False
    assert store.get("log/1") == b"mine"


def test_put_if_absent_does_not_replace_a_put_object(store: Store) -> None:
    store.put("k", b"old")
    assert store.put_if_absent("k", b"new") is False
    assert store.get("k") == b"old"


def test_put_if_absent_after_delete_creates_again(store: Store) -> None:
    assert store.put_if_absent("k", b"1")
    store.delete("k")
    assert store.put_if_absent("k", b"2")
    assert store.get("k") == b"2"


def test_racing_put_if_absent_has_exactly_one_winner_per_key(store: Store) -> None:
    writers = 12
    rounds = 8
    barrier = threading.Barrier(writers)

    def writer(n: int) -> list[int]:
        won = []
        for r in range(rounds):
            barrier.wait()
            if store.put_if_absent(f"log/{r:04d}", f"writer {n}".encode()):
                won.append(r)
        return won

    with ThreadPoolExecutor(writers) as pool:
        results = list(pool.map(writer, range(writers)))
    for r in range(rounds):
        winners = [n for n, won in enumerate(results) if r in won]
        assert len(winners) == 1, f"round {r}: winners {winners}"
        assert store.get(f"log/{r:04d}") == f"writer {winners[0]}".encode()


# -- head / exists -------------------------------------------------------------------------


def test_head_reports_size_and_a_recent_time(store: Store) -> None:
    before = time.time()
    store.put("h", b"x" * 1234)
    info = store.head("h")
    assert info.key == "h"
    assert info.size == 1234
    # Servers keep whole seconds; clocks on one machine agree within that.
    assert before - 2 <= info.mtime <= time.time() + 2


def test_head_and_exists_of_a_missing_object(store: Store) -> None:
    with pytest.raises(errors.NotFound):
        store.head("nothing")
    assert store.exists("nothing") is False
    store.put("nothing", b"")
    assert store.exists("nothing") is True


# -- list ----------------------------------------------------------------------------------


def test_list_of_an_empty_store(store: Store) -> None:
    assert keys(store) == []
    assert keys(store, "no/such/") == []


def test_list_is_recursive_and_in_key_order(store: Store) -> None:
    names = ["b", "a/2", "a/1", "a/sub/x", "a-b", "ab", "a0"]
    for name in names:
        store.put(name, name.encode())
    assert keys(store) == sorted(names)
    infos = {info.key: info.size for info in store.list()}
    assert infos == {name: len(name) for name in names}


def test_list_under_a_prefix_stops_at_the_separator(store: Store) -> None:
    for name in ["a/1", "a/sub/2", "ab/3", "a-b", "b/a/4"]:
        store.put(name, b"")
    assert keys(store, "a/") == ["a/1", "a/sub/2"]
    assert keys(store, "a/sub/") == ["a/sub/2"]
    assert keys(store, "b/") == ["b/a/4"]


def test_list_refuses_a_prefix_without_separator(store: Store) -> None:
    with pytest.raises(errors.InvalidArgument):
        keys(store, "a")


def test_list_starts_after_a_key(store: Store) -> None:
    log = [f"v/log/{i:06d}" for i in range(1, 8)]
    for name in [*log, "v/meta", "w/x"]:
        store.put(name, b"")
    assert keys(store, "v/log/", start_after="v/log/000003") == log[3:]
    assert keys(store, "v/log/", start_after="v/log/000007") == []
    assert keys(store, "v/log/", start_after="v/") == log
    # A start_after that is not itself a key, and one that names a "directory".
    assert keys(store, "", start_after="v/log/0000035") == [*log[3:], "v/meta", "w/x"]
    assert keys(store, "", start_after="v/log/") == [*log, "v/meta", "w/x"]
    assert keys(store, "", start_after="v/log/~") == ["v/meta", "w/x"]


def test_list_crosses_page_boundaries(store: Store) -> None:
    # More keys than one S3 listing page (1000) holds.
    names = [f"many/{i:05d}" for i in range(1234)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: store.put(n, b"."), names))
    assert keys(store, "many/") == names
    assert keys(store, "many/", start_after="many/00999") == names[1000:]


# -- delete --------------------------------------------------------------------------------


def test_delete_removes_and_tolerates_missing(store: Store) -> None:
    store.put("d/1", b"x")
    store.put("d/2", b"y")
    store.delete("d/1")
    store.delete("d/1")
    store.delete("never/existed")
    assert keys(store) == ["d/2"]
    with pytest.raises(errors.NotFound):
        store.get("d/1")


# -- identity ------------------------------------------------------------------------------


def test_url_reopens_the_same_store(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from kvol.store import open_store

    if store.kind == "s3":
        from tests.minio import ACCESS_KEY, SECRET_KEY

        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    store.put("here", b"same store")
    again = open_store(store.url)
    assert again.kind == store.kind
    assert again.url == store.url
    assert again.get("here") == b"same store"


def test_concurrent_use_from_many_threads(store: Store) -> None:
    def work(i: int) -> bytes:
        key = f"t/{i:03d}"
        store.put(key, key.encode() * 100)
        return store.get(key)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(work, range(200)))
    assert results == [f"t/{i:03d}".encode() * 100 for i in range(200)]
    assert len(keys(store, "t/")) == 200
