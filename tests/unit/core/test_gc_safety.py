"""Garbage collection never deletes what a commit publishes: it decides by the store's
clock, looks at each object again right before deleting it, refuses graces shorter than
the renewal protocol covers, and removes the leftovers of killed writes.

Each test here reproduces one defect and uses only names older versions had, so it fails
on them for the reason it names."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Collection
from pathlib import Path
from urllib.parse import quote

import pytest

from kvol import content
from kvol.errors import InvalidArgument
from kvol.repo import Repo
from tests.unit.core.helpers import (
    CHUNK,
    HOUR,
    CountingStore,
    aged_orphans,
    backdate,
    object_files,
    upload,
    volume_tree,
)


def local_clock_off_by(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """This process's wall clock is wrong by ``seconds`` (the store's is right)."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + seconds)


class CommitDuringScanStore(CountingStore):
    """A real store on which a commit runs while a collection reads the log: right after
    the collection finds the end of the log, before it decides what to delete."""

    during_scan: Callable[[], None] | None = None

    def _get(self, key: str) -> bytes:
        try:
            return super()._get(key)
        except FileNotFoundError:
            hook = self.during_scan
            if "/log/" in key and hook is not None:
                self.during_scan = None
                hook()
            raise


def test_gc_keeps_an_object_a_commit_renews_and_publishes_during_its_scan(
    tmp_path: Path,
) -> None:
    store = CommitDuringScanStore(tmp_path / "store")
    repo = Repo.create(store, chunk_size=CHUNK)
    data = os.urandom(3 * CHUNK)
    # A failed commit's upload, long ago.
    orphans = aged_orphans(store, repo, data, 2 * HOUR)

    def commit() -> None:
        # Reuses the old objects (renewing them) and publishes, unseen by the scan.
        repo.publish([upload(repo, "f", data)], 0)

    store.during_scan = commit
    repo.gc(grace_seconds=HOUR)
    assert store.during_scan is None, "the commit did not run during the collection"
    assert all(p.exists() for p in orphans)
    assert volume_tree(repo) == {"f": data}


def test_gc_decides_ages_by_the_stores_clock_not_a_fast_local_one(
    store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repo.create(store, chunk_size=CHUNK)
    data = os.urandom(3 * CHUNK)
    put = upload(repo, "f", data)  # uploaded just now, not yet published
    local_clock_off_by(monkeypatch, +2 * HOUR)
    report = repo.gc(grace_seconds=HOUR)
    assert report.objects_deleted == 0
    assert report.objects_kept_young == 3
    monkeypatch.undo()
    repo.publish([put], 0)
    assert volume_tree(repo) == {"f": data}


def test_a_commit_with_a_slow_local_clock_renews_what_it_reuses(
    store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repo.create(store, chunk_size=CHUNK)
    data = os.urandom(3 * CHUNK)
    # Older than the renewal threshold, by the store's clock.
    aged_orphans(store, repo, data, 1.5 * HOUR)
    local_clock_off_by(monkeypatch, -2 * HOUR)
    put = upload(repo, "f", data)  # the commit's upload reuses them
    monkeypatch.undo()
    repo.gc(grace_seconds=HOUR)  # a collection between upload and publish
    repo.publish([put], 0)
    assert volume_tree(repo) == {"f": data}


@pytest.mark.parametrize(
    "grace", [0, 60, content.REFRESH_AFTER_SECONDS, -1, math.nan, math.inf, -math.inf]
)
def test_gc_refuses_a_grace_the_renewal_protocol_does_not_cover(
    store: CountingStore, grace: float
) -> None:
    repo = Repo.create(store, chunk_size=CHUNK)
    # An in-flight commit's upload, reused by name.
    orphans = aged_orphans(store, repo, os.urandom(3 * CHUNK), 600)
    with pytest.raises(InvalidArgument, match="grace"):
        repo.gc(grace_seconds=grace)
    assert all(p.exists() for p in orphans)


class SlowCommitStore(CountingStore):
    """A real store on which a commit is slow between its upload and its publish, and a
    collection runs right before the entry is written."""

    slow = 0.0
    grace = 0.0
    volume_id = ""

    def sync(self, keys: Collection[str] = ()) -> None:
        time.sleep(self.slow)
        super().sync(keys)

    def _put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        if "/log/" in key and self.volume_id:
            Repo(self, self.volume_id).gc(grace_seconds=self.grace)
        return super()._put_if_absent(key, data)


def test_a_commit_slower_than_the_renewal_threshold_renews_before_publishing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The protocol at a scale a test can wait for: renew after 1 s, collect after 2 s.
    monkeypatch.setattr(content, "REFRESH_AFTER_SECONDS", 1.0)
    store = SlowCommitStore(tmp_path / "store")
    repo = Repo.create(store, chunk_size=CHUNK)
    data = os.urandom(3 * CHUNK)
    upload(repo, "f", data)  # a failed commit's upload
    orphans = object_files(store, repo.volume_id, "blobs")
    time.sleep(0.3)
    put = upload(repo, "f", data)  # reused: younger than the threshold
    store.slow, store.grace, store.volume_id = 2.5, 2.0, repo.volume_id
    repo.publish([put], 0)
    assert all(p.exists() for p in orphans)
    assert volume_tree(repo) == {"f": data}


# -- leftovers of killed writes -------------------------------------------------------------------

KILLED_PUT = """
import os, signal, sys
from kvol.store import FilesystemStore
store = FilesystemStore(sys.argv[1])
# Killed between writing the temporary and renaming it into place.
os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
store.put(sys.argv[2], os.urandom(1 << 20))
"""


def test_gc_removes_temporaries_of_killed_writes_older_than_the_grace(
    store: CountingStore,
) -> None:
    repo = Repo.create(store, chunk_size=CHUNK)
    for _ in range(2):
        killed = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(KILLED_PUT), str(store.root), "x/y"],
            check=False,
        )
        assert killed.returncode == -9
    leftovers = [p for p in (store.root / ".tmp").iterdir() if p.is_file()]
    assert len(leftovers) == 2
    backdate(leftovers[:1], 2 * HOUR)

    repo.gc(grace_seconds=HOUR)
    assert not leftovers[0].exists()
    assert leftovers[1].exists()  # young: may be a write in progress


def test_gc_reports_what_it_removed(store: CountingStore) -> None:
    repo = Repo.create(store, chunk_size=CHUNK)
    orphans = aged_orphans(store, repo, os.urandom(3 * CHUNK), 2 * HOUR)
    leftover = store.root / ".tmp" / "left-by-a-killed-write"
    leftover.write_bytes(b"x" * 10)
    backdate([leftover], 2 * HOUR)

    dry = repo.gc(grace_seconds=HOUR, dry_run=True)
    assert all(p.exists() for p in [*orphans, leftover])
    report = repo.gc(grace_seconds=HOUR)
    expected = sorted(str(p.relative_to(store.root)) for p in orphans)
    assert sorted(dry.deleted) == sorted(report.deleted) == expected
    assert (report.objects_deleted, report.bytes_deleted) == (3, 3 * CHUNK)
    assert (report.temporaries_deleted, report.temporary_bytes_deleted) == (1, 10)
    assert not any(p.exists() for p in [*orphans, leftover])


def test_an_object_a_killed_collection_moved_aside_goes_back_if_renewed(
    store: CountingStore,
) -> None:
    repo = Repo.create(store, chunk_size=CHUNK)
    data = os.urandom(3 * CHUNK)
    put = upload(repo, "f", data)
    repo.publish([put], 0)
    blob = object_files(store, repo.volume_id, "blobs")[0]
    key = str(blob.relative_to(store.root))
    # Where a collection killed between moving it aside and deciding leaves it.
    blob.rename(store.root / ".tmp" / f"gc-0123456789abcdef-{quote(key, safe='')}")
    repo.gc(grace_seconds=HOUR)
    assert blob.exists()
    assert volume_tree(repo) == {"f": data}
