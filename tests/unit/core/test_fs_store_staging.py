"""A filesystem store names a commit's content only at the commit's sync, once the data
is durable: a name in the store never holds a file a power loss cut short, which matters
because a later commit reuses what it finds there without reading it. Until then the
process that wrote it finds and reuses it. The sync waits for the commit's own objects,
not for everything written to the store's filesystem, unless they are many."""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path

import pytest

from kvol import errors, fsck
from kvol.catalog import Catalog
from kvol.content import PACK_THRESHOLD
from kvol.fsops import SYNC_EACH_LIMIT
from kvol.repo import Repo
from kvol.store import FilesystemStore, fs_staged
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import CountingStore, write


class FailingSync(FilesystemStore):
    """A durable store whose next sync fails after noting the content then named. Its
    content takes the kernel's copy path (copy_in); CountingFailingSync's, put."""

    fail = True
    before: Collection[str] = ()

    def sync(self, keys: Collection[str] = ()) -> None:
        self.before = named_content(self.root)
        if self.fail:
            self.fail = False
            raise errors.StoreUnavailable("the store went away before the entry")
        super().sync(keys)


class CountingFailingSync(FailingSync, CountingStore):
    pass


def named_content(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for kind in ("blobs", "packs")
        for p in root.glob(f"volumes/*/{kind}/*/*")
        if p.is_file()
    )


def temporaries(root: Path) -> list[str]:
    return sorted(p.name for p in (root / ".tmp").iterdir())


def copy_of(store: FilesystemStore, tmp_path: Path) -> WorkingCopy:
    Catalog(store).create("vol")
    return WorkingCopy.create(Catalog(store).repo("vol"), tmp_path / "copy")


def write_some(copy: WorkingCopy) -> dict[str, bytes]:
    files = {
        "big": b"large, in chunks of its own " * (PACK_THRESHOLD // 10),
        "small/a": b"packed with the other",
        "small/b": b"packed with the one",
    }
    for rel, data in files.items():
        write(copy.root, rel, data)
    return files


def published(repo: Repo) -> dict[str, bytes]:
    reader = repo.reader()
    return {path: reader.read(record) for path, record in repo.state().files.items()}


@pytest.mark.parametrize("store_class", [FailingSync, CountingFailingSync])
def test_content_has_no_name_in_the_store_before_its_commit_syncs(
    tmp_path: Path, store_class: type[FailingSync]
) -> None:
    store = store_class(tmp_path / "store", durable=True)
    copy = copy_of(store, tmp_path)
    files = write_some(copy)
    with pytest.raises(errors.StoreUnavailable):
        copy.commit()
    assert store.before == []
    assert named_content(store.root) == []
    staged = temporaries(store.root)
    assert staged

    # The next commit of the same process finds what the failed one staged: nothing is
    # sent again, and the sync names it.
    if isinstance(store, CountingStore):
        store.reset()
    assert copy.commit().seq == 1
    if isinstance(store, CountingStore):
        assert store.count("put") == 0
    assert temporaries(store.root) == []
    assert store.before == []
    assert len(named_content(store.root)) >= 2
    assert published(copy.repo) == files
    assert fsck.check(copy.repo).ok
    copy.close(final_commit=False)


def test_content_collected_before_its_commit_syncs_fails_the_commit_and_a_retry_sends_it(
    tmp_path: Path,
) -> None:
    class CollectedFirst(CountingStore):
        collect = True

        def sync(self, keys: Collection[str] = ()) -> None:
            if self.collect:
                self.collect = False
                # A collection whose grace every staged temporary outlived.
                self.remove_temporaries(time.time() + 60)
            super().sync(keys)

    store = CollectedFirst(tmp_path / "store", durable=True)
    copy = copy_of(store, tmp_path)
    files = write_some(copy)
    with pytest.raises(errors.Conflict, match="collected before the commit"):
        copy.commit()
    assert copy.repo.head() == 0
    assert copy.commit().seq == 1
    assert published(copy.repo) == files
    assert fsck.check(copy.repo).ok
    copy.close(final_commit=False)


def test_a_staged_object_reads_as_stored_in_the_process_that_wrote_it(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store", durable=True)
    key = "volumes/v/blobs/ab/abcd"
    store.put(key, b"staged", staged=True)
    assert store.head(key).size == 6
    assert store.get(key) == b"staged"
    assert not (store.root / key).exists()
    store.sync([key])
    assert (store.root / key).read_bytes() == b"staged"
    assert store.get(key) == b"staged"


@pytest.mark.parametrize(
    ("changed", "whole_filesystem_syncs"), [(1, 0), (SYNC_EACH_LIMIT // 2, 0), (100, 2)]
)
def test_a_commit_waits_for_the_whole_store_filesystem_only_for_many_objects(
    tmp_path: Path, whole_syncs: list[str], changed: int, whole_filesystem_syncs: int
) -> None:
    # Small files of their own size each (one object each), in a copy that syncs its
    # few paths alone: the syncs counted are the store's (its data, then its names).
    store = CountingStore(tmp_path / "store", durable=True)
    copy = copy_of(store, tmp_path)
    for n in range(changed):
        write(copy.root, f"f{n}", bytes([n % 256]) * (PACK_THRESHOLD + 1 + n))
    whole_syncs.clear()
    assert copy.commit().files == changed
    assert [p for p in whole_syncs if p == str(store.root)] == [str(store.root)] * (
        whole_filesystem_syncs
    )
    assert fsck.check(copy.repo).ok
    copy.close(final_commit=False)


def test_content_no_sync_ever_asked_for_is_forgotten_with_its_file_after_a_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Orphans of commits that failed: a process that runs for weeks must not hold them.
    store = CountingStore(tmp_path / "store", durable=True)
    store.put("volumes/v/blobs/aa/aaaa", b"orphan", staged=True)
    store.put("volumes/v/blobs/bb/bbbb", b"used", staged=True)
    assert len(temporaries(store.root)) == 2
    monkeypatch.setattr(fs_staged, "ABANDONED_AFTER_SECONDS", 0.0)
    store.sync(["volumes/v/blobs/bb/bbbb"])
    assert temporaries(store.root) == []
    assert store.get("volumes/v/blobs/bb/bbbb") == b"used"
    with pytest.raises(errors.NotFound):
        store.head("volumes/v/blobs/aa/aaaa")


def test_staged_content_a_commit_found_is_not_forgotten_before_that_commit_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Staged a day ago by a commit that failed; a commit now finds it and reuses it. A sync
    # of another commit in between must not forget it as an orphan: the entry would name
    # an object that is not there (its directory exists, so nothing else would notice).
    clock = [1000.0]
    monkeypatch.setattr(fs_staged.time, "monotonic", lambda: clock[0])
    store = CountingStore(tmp_path / "store", durable=True)
    store.put("volumes/v/blobs/aa/aa01", b"named before")
    reused, other = "volumes/v/blobs/aa/aa02", "volumes/v/blobs/bb/bb01"
    store.put(reused, b"staged by a failed commit", staged=True)
    clock[0] += fs_staged.ABANDONED_AFTER_SECONDS + 60
    assert store.head(reused).size == len(b"staged by a failed commit")  # found: reused
    store.put(other, b"another commit's", staged=True)
    store.sync([other])
    store.sync([reused])
    assert store.get(reused) == b"staged by a failed commit"
    assert (store.root / reused).read_bytes() == b"staged by a failed commit"


def test_closing_the_store_removes_content_no_sync_named_and_refuses_to_stage_more(
    tmp_path: Path,
) -> None:
    store = CountingStore(tmp_path / "store", durable=True)
    copy = copy_of(store, tmp_path)
    write(copy.root, "named", b"x" * (PACK_THRESHOLD + 1))
    copy.commit()
    store.put("volumes/v/blobs/aa/aaaa", b"orphan of a failed commit", staged=True)
    assert len(temporaries(store.root)) == 1
    copy.close(final_commit=False)
    store.close()
    assert temporaries(store.root) == []
    with pytest.raises(errors.NotFound):
        store.head("volumes/v/blobs/aa/aaaa")
    with pytest.raises(errors.StoreError, match="closed"):
        store.put("volumes/v/blobs/cc/cccc", b"late", staged=True)
    assert temporaries(store.root) == []
    with pytest.raises(errors.StoreError, match="closed"):
        store.sync(["volumes/v/blobs/aa/aaaa"])
    assert fsck.check(Catalog(FilesystemStore(store.root)).repo("vol")).ok
