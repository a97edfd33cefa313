"""Garbage collection and the renewal protocol on each kind of store, at a time scale a
test can wait for (renewal after 1 s, so the shortest grace is 2 s): ages come from the
store's own clock, which on S3 cannot be set back, so these tests really wait."""

from __future__ import annotations

import os
import time

import pytest

from kvol import content
from kvol.repo import Repo
from kvol.store import Store
from tests.unit.core.helpers import upload

CHUNK = 64 * 1024
GRACE = 2.0


@pytest.fixture(autouse=True)
def fast_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(content, "REFRESH_AFTER_SECONDS", GRACE / 2)


def blobs(repo: Repo) -> set[str]:
    return {i.key for i in repo.store.list(repo.keys.blob_prefix)}


def test_gc_deletes_old_orphans_and_keeps_young_ones_and_published_ones(store: Store) -> None:
    repo = Repo.create(store, chunk_size=CHUNK)
    published = upload(repo, "kept", os.urandom(5 * CHUNK))
    repo.publish([published], 0)
    upload(repo, "failed", os.urandom(5 * CHUNK))  # a failed commit's upload
    old = blobs(repo) - {repo.keys.blob(p.obj) for p in published.record.parts}
    time.sleep(GRACE + 1.2)
    young = upload(repo, "in-flight", os.urandom(5 * CHUNK))

    report = repo.gc(grace_seconds=GRACE)
    assert set(report.deleted) == old
    assert blobs(repo).isdisjoint(old)
    repo.publish([young], 1)
    reader = repo.reader()
    for record in repo.state().files.values():
        reader.read(record)


def test_a_slow_commit_renews_what_it_reuses_before_publishing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repo.create(store, chunk_size=CHUNK)
    data = os.urandom(5 * CHUNK)
    upload(repo, "f", data)  # a failed commit's upload
    put = upload(repo, "f", data)  # reused by the next commit...
    time.sleep(GRACE + 1.2)  # ...which is slow to publish: its objects pass the grace
    put_if_absent = store.put_if_absent

    def collect_first(key: str, data: bytes | memoryview) -> bool:
        # A collection runs right before the entry is written.
        if "/log/" in key:
            Repo(store, repo.volume_id).gc(grace_seconds=GRACE)
        return put_if_absent(key, data)

    monkeypatch.setattr(store, "put_if_absent", collect_first)
    repo.publish([put], 0)
    assert repo.reader().read(repo.state().files["f"]) == data
