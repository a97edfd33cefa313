"""What garbage collection and the renewal protocol ask of every store: the store's own
clock, renewing an object in place, deleting only what is still old, and cleaning up
after killed writes. Run against a directory and a real MinIO, like the contract suite."""

from __future__ import annotations

import time

import pytest

from kvol import errors
from kvol.store import Store

# S3 dates objects to the second.
TICK = 1.1


def test_now_is_the_time_the_store_dates_new_objects(store: Store) -> None:
    before = store.now(max_age=0)
    store.put("a", b"x")
    after = store.now(max_age=0)
    assert before - TICK <= store.head("a").mtime <= after + TICK
    # Between probes the clock advances with local time.
    first = store.now()
    time.sleep(0.2)
    assert 0.15 <= store.now() - first <= 5


def test_probes_leave_nothing_behind(store: Store) -> None:
    for _ in range(3):
        store.now(max_age=0)
    assert list(store.list()) == []


def test_renew_dates_an_object_anew_and_keeps_its_bytes(store: Store) -> None:
    store.put("k/obj", b"content")
    old = store.head("k/obj").mtime
    time.sleep(TICK)
    store.renew("k/obj")
    assert store.head("k/obj").mtime > old
    assert store.get("k/obj") == b"content"
    assert [i.key for i in store.list()] == ["k/obj"]


def test_renew_of_a_missing_object_is_not_found(store: Store) -> None:
    with pytest.raises(errors.NotFound):
        store.renew("gone")
    assert not store.exists("gone")


def test_delete_if_older_deletes_only_what_is_still_old(store: Store) -> None:
    store.put("old", b"o" * 10)
    store.put("young", b"y")
    now = store.now(max_age=0)
    deleted = store.delete_if_older("old", now + 5)
    assert deleted is not None and (deleted.key, deleted.size) == ("old", 10)
    assert not store.exists("old")
    assert store.delete_if_older("young", now - 5) is None
    assert store.get("young") == b"y"
    assert store.delete_if_older("never-there", now + 5) is None


def test_delete_if_older_keeps_an_object_renewed_after_it_was_listed(store: Store) -> None:
    store.put("obj", b"data")
    listed = store.head("obj").mtime
    time.sleep(TICK)
    store.renew("obj")
    # The collector's listing said "old"; the object was renewed since: it stays.
    assert store.delete_if_older("obj", listed + TICK / 2) is None
    assert store.get("obj") == b"data"


def test_remove_temporaries_never_touches_objects(store: Store) -> None:
    store.put("keep/me", b"1")
    store.renew("keep/me")
    store.remove_temporaries(store.now(max_age=0) + 60)
    assert [i.key for i in store.list()] == ["keep/me"]
    assert store.get("keep/me") == b"1"
