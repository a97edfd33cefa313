"""Data-safety defects found by reviewing the journaled reload, the staged downloads and
garbage collection's moving aside: each test fails on the code before its fix."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from kvol import fsops
from kvol.errors import CorruptData, StoreUnavailable
from kvol.model import FileRecord, PutOp
from kvol.repo import Repo
from kvol.workcopy import ReloadResult, WorkingCopy
from tests.unit.core.helpers import (
    CHUNK,
    HOUR,
    CountingStore,
    aged_orphans,
    backdate,
    object_files,
    upload,
    volume_tree,
    write,
)

MakeWc = Callable[[str], WorkingCopy]


def set_aside(store: CountingStore, blob: Path, tag: str = "0123456789abcdef") -> Path:
    """Where a collection killed between moving an object aside and putting it back (it
    had found it renewed) leaves it."""
    key = str(blob.relative_to(store.root))
    aside = store.root / ".tmp" / f"gc-{tag}-{quote(key, safe='')}"
    blob.rename(aside)
    return aside


# -- garbage collection killed with a published object moved aside ---------------------------


def test_a_published_object_a_killed_collection_left_aside_survives_a_much_later_collection(
    store: CountingStore,
) -> None:
    repo = Repo.create(store, chunk_size=CHUNK)
    data = os.urandom(3 * CHUNK)
    repo.publish([upload(repo, "f", data)], 0)
    blobs = object_files(store, repo.volume_id, "blobs")
    aside = set_aside(store, blobs[0])
    # The next collection runs long after the commit's renewal: by then the object is
    # older than the grace, but an entry refers to it.
    backdate([aside], 2 * HOUR)

    repo.gc(grace_seconds=HOUR)

    assert blobs[0].exists()
    assert volume_tree(repo) == {"f": data}


def test_a_collection_never_deletes_another_volumes_object_left_aside(
    store: CountingStore,
) -> None:
    mine = Repo.create(store, chunk_size=CHUNK)
    theirs = Repo.create(store, chunk_size=CHUNK)
    data = os.urandom(3 * CHUNK)
    theirs.publish([upload(theirs, "f", data)], 0)
    blob = object_files(store, theirs.volume_id, "blobs")[0]
    backdate([set_aside(store, blob)], 2 * HOUR)

    mine.gc(grace_seconds=HOUR)

    assert volume_tree(theirs) == {"f": data}


def test_reading_a_published_object_a_killed_collection_left_aside_succeeds(
    store: CountingStore,
) -> None:
    repo = Repo.create(store, chunk_size=CHUNK)
    data = os.urandom(3 * CHUNK)
    repo.publish([upload(repo, "f", data)], 0)
    blobs = object_files(store, repo.volume_id, "blobs")
    set_aside(store, blobs[1])
    set_aside(store, blobs[2], tag="fedcba9876543210")

    # No collection has run since: the objects are only aside, and readers find them.
    assert store.head(str(blobs[2].relative_to(store.root))).size == CHUNK
    assert volume_tree(repo) == {"f": data}


def test_a_collection_survives_another_one_finishing_with_an_object_it_moved_aside(
    store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repo.create(store, chunk_size=CHUNK)
    # A failed commit's orphans, long ago.
    orphans = aged_orphans(store, repo, os.urandom(3 * CHUNK), 2 * HOUR)
    real_rename = os.rename

    def rename(src: str, dst: str) -> None:
        real_rename(src, dst)
        if "gc-" in str(dst):
            # A second collection removes it there (old, referenced by nothing) right then.
            Path(dst).unlink()

    monkeypatch.setattr(os, "rename", rename)
    report = repo.gc(grace_seconds=HOUR)
    monkeypatch.undo()

    assert not any(p.exists() for p in orphans)
    assert report.objects_seen == 3


# -- a reload installing staged downloads ----------------------------------------------------


def reload_while_the_user_writes(
    monkeypatch: pytest.MonkeyPatch, wc: WorkingCopy, when: str, path: Path, data: bytes
) -> ReloadResult:
    """Reload ``wc`` while its user writes ``path`` as the reload moves ``when`` into place:
    after the reload looked at every path, before it reached ``path``."""
    real = fsops.install_file

    def install(root_fd: int, rel: str, *args: Any, **kwargs: Any) -> Any:
        if rel == when:
            path.write_bytes(data)
        return real(root_fd, rel, *args, **kwargs)

    monkeypatch.setattr(fsops, "install_file", install)
    try:
        return wc.reload()
    finally:
        monkeypatch.undo()


def test_reload_keeps_a_file_the_user_changes_while_it_installs_others(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(wc.root, "a", "a1")
    write(wc.root, "b", "b1")
    wc.commit()
    other = make_wc("other")
    write(other.root, "a", "a2")
    write(other.root, "b", "b2")
    other.commit()
    result = reload_while_the_user_writes(
        monkeypatch, wc, "a", wc.root / "b", b"my uncommitted edit"
    )

    assert (wc.root / "b").read_bytes() == b"my uncommitted edit"
    assert "b" in result.kept_local
    wc.commit()
    assert volume_tree(repo) == {"a": b"a2", "b": b"my uncommitted edit"}


def test_reload_keeps_a_file_the_user_creates_while_it_installs_others(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = make_wc("other")
    write(other.root, "a", "theirs")
    write(other.root, "n", "theirs too")
    other.commit()
    result = reload_while_the_user_writes(monkeypatch, wc, "a", wc.root / "n", b"my new file")

    assert (wc.root / "n").read_bytes() == b"my new file"
    assert "n" in result.kept_local
    wc.commit()
    assert volume_tree(repo) == {"a": b"theirs", "n": b"my new file"}


# -- settling a reload or a commit that stopped ------------------------------------------------


def test_a_mode_change_a_stopped_reload_did_not_apply_is_applied_by_the_next_reload(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(wc.root, "tool", "#!/bin/sh\n")
    path.chmod(0o644)
    wc.commit()
    other = make_wc("other")
    (other.root / "tool").chmod(0o755)
    other.commit()

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(5, "the disk failed")

    monkeypatch.setattr(fsops, "install_file", fail)
    with pytest.raises(OSError):
        wc.reload()  # stopped before moving anything into place; settled from its journal
    monkeypatch.undo()

    wc.reload()

    assert path.stat().st_mode & 0o777 == 0o755
    assert wc.status().changed == ()


def test_a_commit_that_failed_to_publish_is_not_taken_for_another_writers_identical_one(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc, monkeypatch: pytest.MonkeyPatch
) -> None:
    second, third = make_wc("second"), make_wc("third")
    # Both copies extract the same archive: the same bytes, mode and mtime.
    for root in (wc.root, second.root):
        os.utime(write(root, "data.csv", "v1 from the archive"), ns=(10**18, 10**18))

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("the store is unreachable")

    monkeypatch.setattr(wc.repo, "publish", unreachable)
    with pytest.raises(StoreUnavailable):
        wc.commit()
    monkeypatch.undo()
    second.commit()  # the identical change, from another writer
    third.reload()
    write(third.root, "data.csv", "v2, later")
    third.commit()

    # This copy's change was never published: its next commit is the last write.
    wc.commit()

    assert volume_tree(repo) == {"data.csv": b"v1 from the archive"}


# -- files of the volume this copy never had ----------------------------------------------------


def assert_a_local_fifo_at_p_keeps_nothing_out(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc, theirs: str
) -> None:
    """Another writer commits ``theirs`` at or under ``p``, where this copy has a FIFO
    (never committed: not a regular file); this copy's reload and commit delete nothing."""
    os.mkfifo(wc.root / "p")
    other = make_wc("other")
    write(other.root, theirs, "theirs")
    other.commit()
    wc.reload()  # the FIFO stays; what is at or under p cannot be written here

    wc.commit()

    assert volume_tree(repo) == {theirs: b"theirs"}


def test_a_commit_never_deletes_files_kept_out_by_a_local_fifo(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    assert_a_local_fifo_at_p_keeps_nothing_out(repo, wc, make_wc, "p/x")


def test_a_commit_never_deletes_files_this_copy_never_had_once_its_own_file_in_the_way_goes(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    write(wc.root, "p", "mine, uncommitted")
    other = make_wc("other")
    write(other.root, "p/x", "theirs")
    other.commit()
    wc.reload()  # the local file stays; p/x is not written here
    (wc.root / "p").unlink()  # dropped instead of committed: p/x was never seen here

    wc.commit()

    assert volume_tree(repo) == {"p/x": b"theirs"}
    write(other.root, "q", "more")
    other.commit()
    wc.reload()
    assert (wc.root / "p" / "x").read_bytes() == b"theirs"


def test_a_reload_stopped_by_a_record_whose_parts_do_not_add_up_leaves_a_usable_copy(
    repo: Repo, wc: WorkingCopy
) -> None:
    # Older versions could publish such a record: the file is unreadable, the rest is not.
    good = upload(repo, "good", b"fine")
    bad = upload(repo, "bad", b"twelve bytes")
    record = bad.record
    bad = PutOp("bad", FileRecord(record.size + 1, 0, 0o644, record.hash, record.parts))
    repo.publish([good, bad], 0)
    write(wc.root, "mine", "local change")

    with pytest.raises(CorruptData):
        wc.reload()

    # The copy still works: status, and a commit of the local change.
    assert wc.status().changed == ("mine",)
    wc.commit()
    assert repo.reader().read(repo.state().files["mine"]) == b"local change"


def test_a_commit_never_deletes_a_file_kept_out_by_a_local_fifo_at_its_path(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    assert_a_local_fifo_at_p_keeps_nothing_out(repo, wc, make_wc, "p")


def test_a_local_directory_where_the_volume_has_a_file_this_copy_never_had_replaces_it(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    write(wc.root, "p/mine", "uncommitted")
    other = make_wc("other")
    write(other.root, "p", "theirs")
    other.commit()
    wc.reload()  # the local directory stays

    wc.commit()  # the later write

    assert volume_tree(repo) == {"p/mine": b"uncommitted"}
    assert wc.status().deleted == ()
