"""A writer that is behind finds the head of the log in one step, however many commits
landed since it last looked, and still never publishes past a gap."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from kvol.errors import CorruptData
from kvol.layout import parse_seq
from kvol.repo import Repo
from kvol.store import ObjectInfo
from tests.unit.core.helpers import CountingStore, upload

BEHIND = 50


def commits(repo: Repo, n: int) -> None:
    for i in range(n):
        repo.publish([upload(repo, f"other{i}", f"other {i}".encode())], i, known_head=i)


def log_calls(store: CountingStore, repo: Repo) -> int:
    """Store requests about log entries (a listing counts once, whatever it returns)."""
    return sum(
        store.count(op, repo.keys.log_prefix) for op in ("head", "get", "put_if_absent", "list")
    )


def test_a_writer_fifty_commits_behind_finds_the_head_in_constant_store_calls(
    repo: Repo, store: CountingStore
) -> None:
    commits(repo, BEHIND)
    op = upload(repo, "mine", b"mine")
    store.reset()
    assert repo.publish([op], 0, known_head=0) == BEHIND + 1
    # Is the base there, is the position after the first free one taken (and the first
    # one too: else it is a gap), one listing, the same check at the head, the write
    # itself: not a probe and a failed conditional write per commit published since.
    assert log_calls(store, repo) <= 6, store.keys
    assert store.count("list", repo.keys.log_prefix) == 1
    assert store.count("put_if_absent", repo.keys.log_prefix) == 1
    assert repo.read_entry(BEHIND + 1) is not None
    assert repo.head() == BEHIND + 1


def test_a_writer_that_loses_its_position_retries_once_at_the_new_head(
    repo: Repo, store: CountingStore
) -> None:
    commits(repo, 1)
    # The writer last saw commit 0; exactly one landed since, so the position it tries
    # first is taken and the one after it is free: the listing then finds the head.
    op = upload(repo, "mine", b"mine")
    store.reset()
    assert repo.publish([op], 0) == 2
    assert store.count("put_if_absent", repo.keys.log_prefix) == 2
    # Lost by one, the usual race, costs no listing: on a filesystem store a listing
    # reads the whole log directory.
    assert store.count("list", repo.keys.log_prefix) == 0


def test_a_writer_far_behind_still_refuses_to_publish_past_a_gap(
    repo: Repo, store: CountingStore
) -> None:
    commits(repo, 20)
    lost = store.root / repo.keys.log(12)
    lost.unlink()
    with pytest.raises(CorruptData, match="gap: entry 12 is missing"):
        repo.publish([upload(repo, "late", b"late")], 3, known_head=3)
    assert not lost.exists()
    assert not (store.root / repo.keys.log(21)).exists()


def test_a_writer_whose_first_position_was_lost_refuses_to_fill_it(
    repo: Repo, store: CountingStore
) -> None:
    commits(repo, 20)
    (store.root / repo.keys.log(6)).unlink()
    with pytest.raises(CorruptData, match="gap: entry 6 is missing"):
        repo.publish([upload(repo, "late", b"late")], 5, known_head=5)
    assert not (store.root / repo.keys.log(6)).exists()


class LaggingListing(CountingStore):
    """A real store whose listings miss some entries, as a listing read while they landed
    may (and one of a store whose listings lag behind its reads)."""

    def __init__(self, store: CountingStore, hidden: Callable[[int], bool]) -> None:
        super().__init__(store.root)
        self.hidden = hidden

    def _list(self, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        for info in super()._list(prefix, start_after):
            seq = parse_seq(info.key.rsplit("/", 1)[-1])
            if seq is None or not self.hidden(seq):
                yield info


def test_a_listing_that_misses_an_entry_landed_meanwhile_is_not_taken_for_a_gap(
    repo: Repo, store: CountingStore
) -> None:
    commits(repo, 10)
    behind = Repo(LaggingListing(store, lambda seq: seq == 7), repo.volume_id)
    assert behind.head() == 10
    assert behind.publish([upload(behind, "mine", b"mine")], 2, known_head=2) == 11
    assert repo.head() == 11


def test_a_listing_that_lags_behind_still_lands_after_the_head(
    repo: Repo, store: CountingStore
) -> None:
    commits(repo, 10)
    behind = Repo(LaggingListing(store, lambda seq: seq > 5), repo.volume_id)
    assert behind.publish([upload(behind, "mine", b"mine")], 2, known_head=2) == 11
    assert repo.head() == 11


def test_a_listing_that_lags_behind_does_not_hide_a_gap(repo: Repo, store: CountingStore) -> None:
    commits(repo, 10)
    (store.root / repo.keys.log(8)).unlink()
    behind = Repo(LaggingListing(store, lambda seq: seq > 5), repo.volume_id)
    with pytest.raises(CorruptData, match="gap: entry 8 is missing"):
        behind.publish([upload(behind, "late", b"late")], 2, known_head=2)
    assert not (store.root / repo.keys.log(8)).exists()
