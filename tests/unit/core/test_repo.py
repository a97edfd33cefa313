"""The commit log, content objects, checkpoints, history and garbage collection."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from blake3 import blake3

from kvol import codec, publish_turns
from kvol.content import PACK_THRESHOLD
from kvol.errors import CorruptData, LimitExceeded, NotFound
from kvol.model import DeleteOp, Entry, Limits, Part, PutOp, State
from kvol.repo import CHECKPOINT_EVERY, Repo
from kvol.store import ObjectInfo
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import (
    CHUNK,
    CountingStore,
    backdate,
    entry,
    log_seqs,
    object_files,
    tree,
    upload,
    volume_tree,
    write,
)

# -- publishing ---------------------------------------------------------------------------------


def test_entries_are_published_with_put_if_absent_and_retried_on_conflict(
    repo: Repo, store: CountingStore
) -> None:
    first = repo.publish([upload(repo, "a", b"first")], base=0, message="one")
    raw_first = (store.root / repo.keys.log(1)).read_bytes()

    # A second writer that has not seen commit 1 publishes from the same base.
    store.reset()
    second = repo.publish([upload(repo, "b", b"second")], base=0, message="two")

    assert (first, second) == (1, 2)
    assert [k for op, k in store.keys if op == "put_if_absent"] == [
        repo.keys.log(1),
        repo.keys.log(2),
    ]
    assert store.count("put", repo.keys.log_prefix) == 0  # never a plain overwrite
    assert (store.root / repo.keys.log(1)).read_bytes() == raw_first
    assert entry(repo, 2).base == 0
    assert volume_tree(repo) == {"a": b"first", "b": b"second"}


def test_concurrent_publishers_in_threads_all_land(
    repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Racing for positions, as writers on different machines do (one machine's take turns).
    monkeypatch.setenv(publish_turns.SWITCH, "off")
    puts = {f"t{i}": upload(repo, f"t{i}", f"thread {i}".encode()) for i in range(16)}
    seqs: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(puts))

    def publish(op: PutOp) -> None:
        barrier.wait()
        seq = repo.publish([op], base=0)
        with lock:
            seqs.append(seq)

    threads = [threading.Thread(target=publish, args=(op,)) for op in puts.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(seqs) == list(range(1, 17))
    assert repo.head() == 16
    assert volume_tree(repo) == {p: f"thread {p[1:]}".encode() for p in puts}


def test_same_path_is_last_write_wins_by_log_order(repo: Repo) -> None:
    repo.publish([upload(repo, "f", b"v1")], 0)
    repo.publish([upload(repo, "f", b"v2")], 0)
    repo.publish([DeleteOp("f"), upload(repo, "g", b"g")], 0)
    repo.publish([upload(repo, "f", b"v4")], 0)
    assert volume_tree(repo, 2) == {"f": b"v2"}
    assert volume_tree(repo, 3) == {"g": b"g"}
    assert volume_tree(repo) == {"f": b"v4", "g": b"g"}


def test_head_ignores_stray_files_in_the_log(repo: Repo, store: CountingStore) -> None:
    repo.publish([], 0)
    (store.root / repo.keys.log_prefix / "README").write_text("not an entry")
    assert repo.head() == 1
    # A later entry past a missing one is a gap: corruption, not the end of the log.
    (store.root / repo.keys.log_prefix / "000000000003").write_bytes(b"a gap before me")
    with pytest.raises(CorruptData, match="gap"):
        repo.head()


# -- content objects ----------------------------------------------------------------------------


def test_content_is_addressed_by_hash(chunked: Repo, store: CountingStore, tmp_path: Path) -> None:
    wc = WorkingCopy.create(chunked, tmp_path / "wc")
    write(wc.root, "big", os.urandom(1_050_000))
    for i in range(20):
        write(wc.root, f"small/{i}", os.urandom(1000 + i))
    wc.commit()

    objects = object_files(store, chunked.volume_id, "blobs") + object_files(
        store, chunked.volume_id, "packs"
    )
    assert objects
    for path in objects:
        assert path.name == blake3(path.read_bytes()).hexdigest()
        assert path.parent.name == path.name[:2]
    wc.close(final_commit=False)


def test_large_files_are_fixed_size_chunks(
    chunked: Repo, store: CountingStore, tmp_path: Path
) -> None:
    wc = WorkingCopy.create(chunked, tmp_path / "wc")
    data = os.urandom(10 * CHUNK + 50_000)
    write(wc.root, "big", data)
    wc.commit()

    record = chunked.state().files["big"]
    assert [p.length for p in record.parts] == [CHUNK] * 10 + [50_000]
    assert all(p.kind == "b" for p in record.parts)
    blobs = object_files(store, chunked.volume_id, "blobs")
    assert sorted(b.stat().st_size for b in blobs) == sorted([CHUNK] * 10 + [50_000])
    assert (
        b"".join((store.root / chunked.keys.blob(p.obj)).read_bytes() for p in record.parts) == data
    )
    assert object_files(store, chunked.volume_id, "packs") == []
    wc.close(final_commit=False)


def test_small_files_of_a_commit_are_packed_together(
    repo: Repo, store: CountingStore, wc: WorkingCopy
) -> None:
    contents = {f"d{i % 5}/f{i}": os.urandom(500 + i) for i in range(200)}
    for rel, data in contents.items():
        write(wc.root, rel, data)
    wc.commit()

    packs = object_files(store, repo.volume_id, "packs")
    assert len(packs) == 1
    assert packs[0].stat().st_size == sum(len(d) for d in contents.values())
    assert object_files(store, repo.volume_id, "blobs") == []
    state = repo.state()
    assert {r.parts[0].obj for r in state.files.values()} == {packs[0].name}
    assert volume_tree(repo) == contents


def test_files_at_the_pack_threshold(repo: Repo, store: CountingStore, wc: WorkingCopy) -> None:
    write(wc.root, "packed", os.urandom(PACK_THRESHOLD))
    write(wc.root, "chunked", os.urandom(PACK_THRESHOLD + 1))
    wc.commit()
    state = repo.state()
    assert state.files["packed"].parts[0].kind == "p"
    assert state.files["chunked"].parts[0].kind == "b"
    assert volume_tree(repo) == tree(wc.root)


def test_identical_content_is_stored_once(
    chunked: Repo, store: CountingStore, tmp_path: Path
) -> None:
    wc = WorkingCopy.create(chunked, tmp_path / "wc")
    big = os.urandom(5 * CHUNK)
    small = os.urandom(3000)
    write(wc.root, "a/big", big)
    write(wc.root, "b/big-copy", big)
    write(wc.root, "a/small", small)
    write(wc.root, "b/small-copy", small)
    wc.commit()
    blobs = object_files(store, chunked.volume_id, "blobs")
    packs = object_files(store, chunked.volume_id, "packs")
    assert len(blobs) == 5
    assert len(packs) == 1
    assert packs[0].stat().st_size == len(small)

    # The same content again in a later commit, under new names, sends nothing new.
    write(wc.root, "c/big-third", big)
    write(wc.root, "c/small-third", small)
    result = wc.commit()
    assert result.files == 2
    assert result.sent_bytes == 0
    assert object_files(store, chunked.volume_id, "blobs") == blobs
    assert object_files(store, chunked.volume_id, "packs") == packs
    assert volume_tree(chunked) == tree(wc.root)
    wc.close(final_commit=False)


def test_a_retried_upload_finds_its_objects(
    chunked: Repo, store: CountingStore, tmp_path: Path
) -> None:
    """A commit that failed after uploading costs nothing to retry."""
    limited = Repo.create(store, chunk_size=CHUNK, limits=Limits(max_files=1))
    wc = WorkingCopy.create(limited, tmp_path / "wc")
    write(wc.root, "one", os.urandom(4 * CHUNK))
    write(wc.root, "two", b"too many files")
    with pytest.raises(LimitExceeded):
        wc.commit()
    assert len(object_files(store, limited.volume_id, "blobs")) == 4

    (wc.root / "two").unlink()
    store.reset()
    result = wc.commit()
    assert result.seq == 1
    assert result.sent_bytes == 0
    assert store.count("put", limited.keys.blob_prefix) == 0
    wc.close(final_commit=False)


# -- checkpoints --------------------------------------------------------------------------------


def fill_log(repo: Repo, commits: int) -> dict[str, bytes]:
    """Publish many small commits; returns what the volume holds at the end."""
    expected: dict[str, bytes] = {}
    for i in range(commits):
        data = f"commit {i}".encode()
        ops: list[PutOp | DeleteOp] = [upload(repo, f"f{i % 10}", data)]
        expected[f"f{i % 10}"] = data
        if i % 7 == 3:
            ops.append(DeleteOp(f"f{(i + 1) % 10}"))
            expected.pop(f"f{(i + 1) % 10}", None)
        repo.publish(list(ops), base=i)
    return expected


def test_state_reads_from_a_checkpoint_not_the_whole_history(
    repo: Repo, store: CountingStore
) -> None:
    commits = 2 * CHECKPOINT_EVERY + 5
    expected = fill_log(repo, commits)
    checkpoints = sorted(p.name for p in (store.root / repo.keys.checkpoint_prefix).iterdir())
    assert checkpoints == [f"{CHECKPOINT_EVERY:012d}", f"{2 * CHECKPOINT_EVERY:012d}"]

    store.reset()
    state = repo.state()
    log_reads = store.count("get", repo.keys.log_prefix)
    assert state.seq == commits
    assert store.count("get", repo.keys.checkpoint_prefix) == 1
    # The 5 entries after the last checkpoint, and one probe past the head.
    assert log_reads == 6

    store.reset()
    assert repo.head() == commits
    assert store.count("get", repo.keys.log_prefix) == 0

    store.reset()
    mid = repo.state(CHECKPOINT_EVERY + 3)
    assert mid.seq == CHECKPOINT_EVERY + 3
    assert store.count("get", repo.keys.log_prefix) <= 4
    assert volume_tree(repo) == expected


def test_a_checkpoint_equals_replaying_the_log(repo: Repo, store: CountingStore) -> None:
    fill_log(repo, CHECKPOINT_EVERY + 2)
    replayed = State()
    for seq in range(1, CHECKPOINT_EVERY + 3):
        replayed.apply(entry(repo, seq), seq)
    from_checkpoint = repo.state()
    assert from_checkpoint.seq == replayed.seq
    assert from_checkpoint.files == replayed.files
    assert from_checkpoint.dirs == replayed.dirs
    raw = (store.root / repo.keys.checkpoint(CHECKPOINT_EVERY)).read_bytes()
    assert State.from_payload(codec.decode("checkpoint", raw)).seq == CHECKPOINT_EVERY


def test_state_past_the_head_is_not_found(repo: Repo) -> None:
    repo.publish([], 0)
    with pytest.raises(NotFound, match="no commit 5"):
        repo.state(5)


# -- history and restore ------------------------------------------------------------------------


def test_history_lists_commits_newest_first(repo: Repo, wc: WorkingCopy) -> None:
    write(wc.root, "a", "12345")
    wc.commit("add a")
    write(wc.root, "b", "xy")
    (wc.root / "a").unlink()
    wc.commit("swap")

    history = repo.history()
    assert [(c.seq, c.message) for c in history] == [(2, "swap"), (1, "add a")]
    assert (history[0].files_written, history[0].paths_deleted, history[0].bytes_written) == (
        1,
        1,
        2,
    )
    assert history[1].writer.pid == os.getpid()
    assert [c.seq for c in repo.history(limit=1)] == [2]


def test_restore_any_past_commit(repo: Repo, wc: WorkingCopy, make_wc) -> None:  # type: ignore[no-untyped-def]
    write(wc.root, "a", "a1")
    write(wc.root, "dir/b", "b1")
    wc.commit()
    first = tree(wc.root)
    write(wc.root, "a", "a2")
    (wc.root / "dir" / "b").unlink()
    (wc.root / "dir").rmdir()
    write(wc.root, "c", "c2")
    (wc.root / "emptydir").mkdir()
    wc.commit()
    second = tree(wc.root)
    write(wc.root, "d", "d3")
    wc.commit()

    seq = repo.restore(1)
    assert seq == 4
    assert volume_tree(repo) == first
    assert not repo.state().is_dir("emptydir")
    assert repo.history()[0].message == "restore of commit 1"

    repo.restore(2, message="back to two")
    assert volume_tree(repo) == second
    assert repo.state().is_dir("emptydir")

    other = make_wc("other")
    assert tree(other.root) == second
    wc.reload()
    assert tree(wc.root) == second


# -- garbage collection -------------------------------------------------------------------------


def orphan_blobs(store: CountingStore, tmp_path: Path) -> tuple[Repo, WorkingCopy, list[Path]]:
    """A volume with one published file and the blobs of a commit that failed its limits."""
    repo = Repo.create(store, chunk_size=CHUNK, limits=Limits(max_file_size=3 * CHUNK))
    wc = WorkingCopy.create(repo, tmp_path / "wc")
    write(wc.root, "kept", os.urandom(3 * CHUNK))
    wc.commit()
    published = set(object_files(store, repo.volume_id, "blobs"))
    write(wc.root, "too-big", os.urandom(4 * CHUNK))
    with pytest.raises(LimitExceeded):
        wc.commit()
    orphans = [p for p in object_files(store, repo.volume_id, "blobs") if p not in published]
    assert len(orphans) == 4
    (wc.root / "too-big").unlink()
    return repo, wc, orphans


def test_gc_deletes_unreferenced_objects_older_than_the_grace(
    store: CountingStore, tmp_path: Path
) -> None:
    repo, wc, orphans = orphan_blobs(store, tmp_path)
    for path in object_files(store, repo.volume_id, "blobs"):
        backdate(path, 7200)  # published ones too: age alone never condemns an object

    dry = repo.gc(grace_seconds=3600, dry_run=True)
    assert dry.objects_deleted == 4
    assert all(p.exists() for p in orphans)

    report = repo.gc(grace_seconds=3600)
    assert report.objects_deleted == 4
    assert report.bytes_deleted == 4 * CHUNK
    assert not any(p.exists() for p in orphans)
    assert len(object_files(store, repo.volume_id, "blobs")) == 3
    assert volume_tree(repo) == tree(wc.root)
    wc.close(final_commit=False)


def test_gc_keeps_an_unpublished_upload_younger_than_the_grace(
    store: CountingStore, tmp_path: Path
) -> None:
    repo, wc, orphans = orphan_blobs(store, tmp_path)
    report = repo.gc(grace_seconds=3600)
    assert report.objects_deleted == 0
    assert report.objects_kept_young == 4
    assert all(p.exists() for p in orphans)
    wc.close(final_commit=False)


class GcBeforePublishStore(CountingStore):
    """A real store on which a garbage collection runs just before each log entry is
    written: the moment a concurrent collector is most dangerous to a commit."""

    grace = 3600.0
    volume_id = ""

    def _put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        if "/log/" in key and self.volume_id:
            Repo(self, self.volume_id).gc(grace_seconds=self.grace)
        return super()._put_if_absent(key, data)


def test_gc_during_a_commit_never_deletes_what_it_publishes(tmp_path: Path) -> None:
    store = GcBeforePublishStore(tmp_path / "store")
    repo = Repo.create(store, chunk_size=CHUNK, limits=Limits(max_files=2))
    wc = WorkingCopy.create(repo, tmp_path / "wc")
    write(wc.root, "first", os.urandom(3 * CHUNK))
    write(wc.root, "second", b"one file")
    write(wc.root, "third", b"too many")
    with pytest.raises(LimitExceeded):
        wc.commit()
    orphans = object_files(store, repo.volume_id, "blobs")
    assert len(orphans) == 3
    # The failed commit was long ago: its objects are past the grace, and past the
    # age at which an upload sends them again.
    for path in orphans:
        backdate(path, 7200)

    (wc.root / "second").unlink()
    (wc.root / "third").unlink()
    write(wc.root, "fresh", os.urandom(3 * CHUNK))  # a new upload, unpublished during the gc
    store.volume_id = repo.volume_id
    result = wc.commit()
    assert result.seq == 1

    # Both the re-used (refreshed) objects and the new ones survived the collection
    # that ran between upload and publish, and read back verified.
    assert volume_tree(repo) == tree(wc.root)
    assert all(p.exists() for p in orphans)
    assert all(p.stat().st_mtime > time.time() - 600 for p in orphans)
    wc.close(final_commit=False)


def test_gc_never_touches_referenced_objects_or_other_volumes(
    store: CountingStore, tmp_path: Path
) -> None:
    repo, wc, _ = orphan_blobs(store, tmp_path)
    other = Repo.create(store, chunk_size=CHUNK)
    other_wc = WorkingCopy.create(other, tmp_path / "other")
    write(other_wc.root, "x", os.urandom(2 * CHUNK))
    other_wc.commit()
    for path in store.root.rglob("*"):
        if path.is_file():
            backdate(path, 7200)

    repo.gc(grace_seconds=3600)
    assert volume_tree(repo) == tree(wc.root)
    assert volume_tree(other) == tree(other_wc.root)
    wc.close(final_commit=False)
    other_wc.close(final_commit=False)


def test_gc_report_counts(store: CountingStore, tmp_path: Path) -> None:
    repo, wc, _ = orphan_blobs(store, tmp_path)
    report = repo.gc(grace_seconds=3600)
    assert report.objects_seen == 7
    assert report.objects_referenced == 3
    wc.close(final_commit=False)


def test_read_of_a_missing_object_is_corrupt_data(repo: Repo, wc: WorkingCopy) -> None:
    write(wc.root, "f", os.urandom(PACK_THRESHOLD + 10))
    wc.commit()
    record = repo.state().files["f"]
    part: Part = record.parts[0]
    repo.store.delete(repo.keys.blob(part.obj))
    with pytest.raises(CorruptData, match="missing"):
        repo.reader().read(record)


def test_stats(repo: Repo, wc: WorkingCopy) -> None:
    write(wc.root, "a", "123")
    write(wc.root, "b/c", "45")
    wc.commit()
    stats = repo.stats()
    assert (stats.files, stats.bytes, stats.head, stats.writers_recent) == (2, 5, 1, 1)
    assert stats.last_commit_time is not None
    assert abs(stats.last_commit_time - time.time()) < 60


def test_destroy_removes_everything(repo: Repo, store: CountingStore, wc: WorkingCopy) -> None:
    write(wc.root, "a", "1")
    wc.commit()
    repo.destroy()
    assert not (store.root / "volumes" / repo.volume_id).exists()
    assert not repo.exists()


def test_listing_is_in_key_order(store: CountingStore) -> None:
    for key in ("b/1", "a-b", "a/1", "a/2"):
        store.put(key, b"x")
    keys = [info.key for info in store.list("")]
    assert keys == sorted(keys)
    assert isinstance(next(store.list("a/")), ObjectInfo)


def test_entry_round_trip(repo: Repo) -> None:
    op = upload(repo, "x/y", b"content")
    seq = repo.publish([op, DeleteOp("z")], 0, "msg")
    got = entry(repo, seq)
    assert isinstance(got, Entry)
    assert got.ops == (op, DeleteOp("z"))
    assert got.message == "msg"
    assert log_seqs(repo.store, repo.volume_id) == [1]  # type: ignore[arg-type]
