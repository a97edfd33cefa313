"""Safety of the commit log: deletions that name what the writer saw, gaps, stores behind a
copy, entries bound to their volume and position, and content ids that cannot collide.

Each test here reproduces one defect of the log and uses only names older versions had,
so it fails on them for the reason it names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from blake3 import blake3

from kvol import errors
from kvol.content import PACK_THRESHOLD, ContentWriter, content_id
from kvol.errors import CorruptData, InvalidArgument
from kvol.model import FileRecord, Limits, MkdirOp, Op, PutOp
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import (
    CHUNK,
    CountingStore,
    backdate,
    read_payload,
    rewrite_entry,
    tree,
    upload,
    volume_tree,
    write,
)

# -- a deletion names what the writer saw -----------------------------------------------------


def test_restore_keeps_a_file_a_writer_adds_while_it_runs(
    repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = repo.publish([upload(repo, "keep", b"k")], 0)
    repo.publish([MkdirOp("d"), upload(repo, "d/old", b"o")], target)
    other = upload(repo, "d/new", b"theirs")
    publish = repo.publish

    def writer_lands_first(ops: list[Op], base: int, message: str | None = None) -> int:
        # Another writer publishes between the restore reading the head and publishing.
        publish([other], base)
        return publish(ops, base, message)

    monkeypatch.setattr(repo, "publish", writer_lands_first)
    repo.restore(target)
    assert volume_tree(repo) == {"keep": b"k", "d/new": b"theirs"}


# -- content ids: one file's bytes never pass for another file's part list ----------------------


def test_a_small_file_equal_to_a_large_files_part_list_keeps_the_volume_readable(
    chunked: Repo, tmp_path: Path
) -> None:
    wc = WorkingCopy.create(chunked, tmp_path / "wc")
    try:
        write(wc.root, "large", os.urandom(3 * CHUNK))
        wc.commit()
        parts = chunked.state().files["large"].parts
        # 96 bytes: the ids of the large file's three chunks, one after the other.
        write(wc.root, "small", b"".join(bytes.fromhex(p.obj) for p in parts))
        wc.commit()
        assert volume_tree(chunked) == tree(wc.root)
        small = chunked.state().files["small"]
        assert small.size == 96 and sum(p.length for p in small.parts) == 96
    finally:
        wc.close(final_commit=False)


def test_multi_part_ids_are_in_their_own_domain(chunked: Repo) -> None:
    data = os.urandom(3 * CHUNK)
    put = upload(chunked, "f", data)
    assert len(put.record.parts) == 3
    part_list = b"".join(bytes.fromhex(p.obj) for p in put.record.parts)
    assert put.record.hash != blake3(part_list).hexdigest()
    # The size is part of the id as well.
    assert put.record.hash != content_id([*put.record.parts[:2], put.record.parts[2]][:2])


def test_files_published_with_the_older_multi_part_ids_still_read(chunked: Repo) -> None:
    data = os.urandom(3 * CHUNK)
    put = upload(chunked, "f", data)
    legacy = blake3(b"".join(bytes.fromhex(p.obj) for p in put.record.parts)).hexdigest()
    record = FileRecord(put.record.size, 0, 0o644, legacy, put.record.parts)
    chunked.publish([PutOp("old", record)], 0)
    assert volume_tree(chunked) == {"old": data}


def test_one_unreadable_file_leaves_the_rest_of_the_volume_readable_and_restorable(
    chunked: Repo,
) -> None:
    large = upload(chunked, "large", os.urandom(3 * CHUNK))
    other = upload(chunked, "other", b"other file")
    good = chunked.publish([large, other], 0)
    # What an older version published for the 96-byte file: the large file's parts.
    bad = FileRecord(96, 0, 0o644, large.record.hash, large.record.parts)
    chunked.publish([PutOp("small", bad)], good)

    state = chunked.state()
    reader = chunked.reader()
    assert reader.read(state.files["other"]) == b"other file"
    assert reader.read(state.files["large"]) == reader.read(large.record)
    with pytest.raises(CorruptData, match="add up"):
        reader.read(state.files["small"])
    chunked.restore(good)
    assert set(chunked.state().files) == {"large", "other"}
    assert volume_tree(chunked)["other"] == b"other file"


# -- gaps in the log and stores behind a copy ---------------------------------------------------


def three_commits(repo: Repo) -> None:
    for i in range(3):
        repo.publish([upload(repo, f"f{i}", os.urandom(PACK_THRESHOLD + 1 + i))], i)


def test_a_missing_entry_with_later_ones_is_a_gap_not_the_end_of_history(
    repo: Repo, store: CountingStore
) -> None:
    three_commits(repo)
    (store.root / repo.keys.log(2)).unlink()
    for read in (repo.state, repo.head, lambda: list(repo.entries_after(0))):
        with pytest.raises(CorruptData, match="gap: entry 2 is missing"):
            read()
    with pytest.raises(CorruptData, match="gap"):
        repo.state(3)
    # History before the gap is still there to look at.
    assert set(repo.state(1).files) == {"f0"}


def test_gc_refuses_to_run_on_a_log_with_a_gap(repo: Repo, store: CountingStore) -> None:
    three_commits(repo)
    (store.root / repo.keys.log(2)).unlink()
    objects = [p for p in (store.root / repo.keys.prefix).rglob("*") if p.is_file()]
    for path in objects:
        backdate(path, 7200)
    with pytest.raises(CorruptData, match="gap"):
        repo.gc(grace_seconds=3600)
    assert all(p.exists() for p in objects if "/log/" not in str(p))


def test_a_writer_ahead_of_the_store_refuses_to_publish(repo: Repo, store: CountingStore) -> None:
    three_commits(repo)
    # The store is rolled back to commit 1 (restored from an older backup).
    for seq in (2, 3):
        (store.root / repo.keys.log(seq)).unlink()
    with pytest.raises(errors.KvolError) as raised:
        repo.publish([upload(repo, "late", b"late")], base=3)
    assert type(raised.value).__name__ == "StoreBehind"
    assert "behind" in str(raised.value)
    with pytest.raises(errors.KvolError):
        repo.publish([upload(repo, "late", b"late")], base=1, known_head=3)
    assert repo.head() == 1


# -- entries, checkpoints and metadata are bound to where they were written ---------------------


def swap(store: CountingStore, a: str, b: str) -> None:
    pa, pb = store.root / a, store.root / b
    da, db = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(db)
    pb.write_bytes(da)


def test_swapped_entries_are_rejected(repo: Repo, store: CountingStore) -> None:
    three_commits(repo)
    swap(store, repo.keys.log(2), repo.keys.log(3))
    with pytest.raises(CorruptData, match="position"):
        repo.state()


def test_a_replayed_entry_is_rejected(repo: Repo, store: CountingStore) -> None:
    three_commits(repo)
    (store.root / repo.keys.log(3)).write_bytes((store.root / repo.keys.log(1)).read_bytes())
    with pytest.raises(CorruptData, match="position 1"):
        repo.state()


def test_an_entry_of_another_volume_is_rejected(store: CountingStore) -> None:
    a, b = Repo.create(store), Repo.create(store)
    three_commits(a)
    three_commits(b)
    (store.root / a.keys.log(2)).write_bytes((store.root / b.keys.log(2)).read_bytes())
    with pytest.raises(CorruptData, match=f"belongs to volume '{b.volume_id}'"):
        a.state()


def test_a_checkpoint_of_another_volume_is_rejected(store: CountingStore) -> None:
    a, b = Repo.create(store), Repo.create(store)
    three_commits(a)
    three_commits(b)
    b.write_checkpoint(3)
    target = store.root / a.keys.checkpoint(3)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes((store.root / b.keys.checkpoint(3)).read_bytes())
    with pytest.raises(CorruptData, match="checkpoint"):
        a.state()


def test_metadata_of_another_volume_is_rejected(store: CountingStore) -> None:
    a, b = Repo.create(store), Repo.create(store)
    (store.root / a.keys.meta).write_bytes((store.root / b.keys.meta).read_bytes())
    with pytest.raises(CorruptData, match="names volume"):
        _ = Repo(store, a.volume_id).meta


def unbind(store: CountingStore, repo: Repo, seq: int) -> None:
    payload = read_payload(store, repo.volume_id, seq)
    payload.pop("volume", None)
    payload.pop("seq", None)
    rewrite_entry(store, repo.volume_id, seq, payload)


def test_an_unbound_entry_in_a_volume_that_binds_them_is_rejected(
    repo: Repo, store: CountingStore
) -> None:
    three_commits(repo)
    unbind(store, repo, 2)
    with pytest.raises(CorruptData, match="does not name its volume"):
        Repo(store, repo.volume_id).state()


def test_volumes_of_the_older_format_with_unbound_entries_still_read(
    repo: Repo, store: CountingStore
) -> None:
    three_commits(repo)
    expected = volume_tree(repo)
    bound_first = (store.root / repo.keys.log(1)).read_bytes()
    meta = json.loads((store.root / repo.keys.meta).read_bytes())
    assert meta["format"] == 2
    meta["format"] = 1
    (store.root / repo.keys.meta).write_text(json.dumps(meta))
    for seq in (1, 2, 3):
        unbind(store, repo, seq)
    old = Repo(store, repo.volume_id)
    assert volume_tree(old) == expected
    # Where an entry of an older volume does name its place, it is still checked.
    (store.root / repo.keys.log(2)).write_bytes(bound_first)
    with pytest.raises(CorruptData, match="position"):
        Repo(store, repo.volume_id).state()


# -- limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, 1.5, True, "10", 2**63])
def test_a_malformed_limit_is_refused_before_anything_is_written(value: object) -> None:
    with pytest.raises(InvalidArgument):
        Limits(max_files=value)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        Limits().merged(Limits(max_bytes=value))  # type: ignore[arg-type]


def test_known_content_is_reused_only_for_the_same_bytes_and_size(chunked: Repo) -> None:
    large = upload(chunked, "large", os.urandom(3 * CHUNK))
    small = b"".join(bytes.fromhex(p.obj) for p in large.record.parts)
    # An index of a volume written with the older ids: the large file is known by the
    # digest of its part list, which is also the digest of the small file's bytes.
    known = {blake3(small).hexdigest(): large.record.parts}
    with ContentWriter(chunked.store, chunked.keys, CHUNK, known=known) as writer:
        future = writer.add_bytes(small)
        writer.finish()
        up = future.result()
    assert up.size == 96
    assert [p.length for p in up.parts] == [96]
    record = FileRecord(up.size, 0, 0o644, up.hash, up.parts)
    assert chunked.reader().read(record) == small
