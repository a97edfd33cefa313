"""fsck against a real filesystem store (and MinIO): every kind of damage is found with the
commits and files it affects, and repair re-publishes exactly what local copies still hold."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import kvol
from kvol import fsck
from kvol.catalog import Catalog
from kvol.content import digest
from kvol.fsck import Damage, FsckReport
from kvol.layout import VolumeKeys
from kvol.overlay import ContentCache
from kvol.repo import Repo
from kvol.store import FilesystemStore, Store
from kvol.workcopy import WorkingCopy
from tests.minio import MinioServer, minio, s3_bucket  # noqa: F401 (fixtures)
from tests.unit.core.helpers import read_payload, rewrite_entry, tree, volume_tree, write

CHUNK = 64 * 1024
#: Large enough not to be packed: five chunks of distinct bytes and a tail, six blobs.
BIG = b"".join(bytes([i]) * CHUNK for i in range(1, 6)) + b"tail" * 100
BIG2 = b"".join(bytes([i]) * CHUNK for i in range(11, 16)) + b"x" * 10


@dataclass
class Volume:
    """A volume with a known history:

    1: small a.txt, b.txt, c.txt (one pack) and big.bin (blobs)
    2: copy.bin, the same content as big.bin (same blobs)
    3: a.txt changed (a new pack)
    4: big.bin replaced (new blobs); copy.bin still holds the first content
    5: new.txt and dir/d.txt (one pack)
    """

    repo: Repo
    wc: WorkingCopy
    root: Path

    @property
    def keys(self) -> VolumeKeys:
        return self.repo.keys

    def key_of(self, path: str, seq: int, part: int = 0) -> str:
        record = self.repo.state(seq).files[path]
        p = record.parts[part]
        return self.keys.content(p.kind, p.obj)

    @property
    def fs(self) -> FilesystemStore:
        store = self.repo.store
        assert isinstance(store, FilesystemStore)
        return store

    def path_of(self, key: str) -> Path:
        return self.fs.root / key


def _build(repo: Repo, root: Path) -> tuple[WorkingCopy, Path]:
    wc = WorkingCopy.create(repo, root)
    write(root, "a.txt", "alpha")
    write(root, "dir/b.txt", "bravo")
    write(root, "dir/c.txt", "charlie")
    write(root, "big.bin", BIG)
    assert wc.commit("one").seq == 1
    write(root, "copy.bin", BIG)
    assert wc.commit("two").seq == 2
    write(root, "a.txt", "alpha, again")
    assert wc.commit("three").seq == 3
    write(root, "big.bin", BIG2)
    assert wc.commit("four").seq == 4
    write(root, "new.txt", "november")
    write(root, "dir/d.txt", "delta")
    assert wc.commit("five").seq == 5
    return wc, root


@pytest.fixture
def vol(store: FilesystemStore, tmp_path: Path) -> Iterator[Volume]:
    repo = Repo.create(store, chunk_size=CHUNK)
    wc, root = _build(repo, tmp_path / "wc")
    yield Volume(repo, wc, root)
    wc.close(final_commit=False)


def only(report: FsckReport) -> Damage:
    assert len(report.damage) == 1, report.damage
    return report.damage[0]


def fresh_tree(repo: Repo, where: Path) -> dict[str, bytes]:
    copy = WorkingCopy.create(Repo(repo.store, repo.volume_id), where)
    try:
        return tree(where)
    finally:
        copy.close(final_commit=False)


# -- finding damage -----------------------------------------------------------------------------


def test_a_healthy_volume_checks_clean_with_everything_counted(vol: Volume) -> None:
    report = fsck.check(vol.repo)
    assert report.ok, report.damage
    assert report.head == 5
    assert report.entries_checked == 5
    # 3 packs (commits 1, 3, 5) and six blobs of each large file
    assert report.objects_checked == 3 + 6 + 6
    assert report.bytes_checked >= len(BIG) + len(BIG2)


def test_a_deleted_blob_names_every_commit_and_file_that_held_it(vol: Volume) -> None:
    key = vol.key_of("big.bin", 1, part=1)
    vol.path_of(key).unlink()
    damage = only(fsck.check(vol.repo))
    assert (damage.kind, damage.key) == ("missing-object", key)
    # big.bin had that content at 1-3; copy.bin (same content) at 2-5.
    assert damage.commits == (1, 2, 3, 4, 5)
    assert damage.files == ("big.bin", "copy.bin")
    # Existence needs no hashing.
    assert only(fsck.check(vol.repo, verify_content=False)).kind == "missing-object"


def test_a_commit_after_the_file_was_deleted_is_not_affected(vol: Volume) -> None:
    (vol.root / "copy.bin").unlink()
    assert vol.wc.commit("six").seq == 6
    key = vol.key_of("copy.bin", 5, part=0)
    vol.path_of(key).unlink()
    damage = only(fsck.check(vol.repo))
    assert damage.commits == (1, 2, 3, 4, 5)
    assert damage.files == ("big.bin", "copy.bin")


def test_a_truncated_pack_is_a_size_mismatch_for_the_files_packed_in_it(vol: Volume) -> None:
    key = vol.key_of("dir/b.txt", 1)
    path = vol.path_of(key)
    path.write_bytes(path.read_bytes()[:-3])
    for verify in (True, False):
        damage = only(fsck.check(vol.repo, verify_content=verify))
        assert (damage.kind, damage.key) == ("size-mismatch", key)
        # a.txt left that pack at commit 3; b and c are in it to the end.
        assert damage.files == ("a.txt", "dir/b.txt", "dir/c.txt")
        assert damage.commits == (1, 2, 3, 4, 5)


def test_a_flipped_byte_is_a_hash_mismatch_seen_only_when_content_is_hashed(vol: Volume) -> None:
    key = vol.key_of("big.bin", 4, part=0)
    path = vol.path_of(key)
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    damage = only(fsck.check(vol.repo))
    assert (damage.kind, damage.key) == ("hash-mismatch", key)
    assert damage.commits == (4, 5)
    assert damage.files == ("big.bin",)
    # Same size: without hashing nothing is wrong to see.
    assert fsck.check(vol.repo, verify_content=False).ok


def test_a_log_entry_removed_in_the_middle_is_a_gap_not_the_end_of_history(vol: Volume) -> None:
    key = vol.keys.log(3)
    vol.path_of(key).unlink()
    report = fsck.check(vol.repo)
    assert report.head == 5
    assert report.entries_checked == 4
    damage = only(report)
    assert (damage.kind, damage.key) == ("log-gap", key)
    # Without a later checkpoint every commit from the gap on is read wrongly.
    assert damage.commits == (3, 4, 5)


def test_a_gap_before_a_checkpoint_names_what_the_lost_entries_changed(vol: Volume) -> None:
    vol.repo.write_checkpoint(4)
    vol.path_of(vol.keys.log(3)).unlink()
    damage = only(fsck.check(vol.repo))
    assert damage.kind == "log-gap"
    assert damage.commits == (3,)  # the checkpoint at 4 holds the state again
    assert damage.files == ("a.txt",)


def test_a_missing_tail_behind_a_checkpoint_is_a_gap(vol: Volume) -> None:
    vol.repo.write_checkpoint(5)
    vol.path_of(vol.keys.log(5)).unlink()
    vol.path_of(vol.keys.log(4)).unlink()
    report = fsck.check(vol.repo)
    assert report.head == 5
    damage = only(report)
    assert damage.kind == "log-gap"
    assert damage.commits == (4,)
    assert "4 to 5" in damage.detail


def test_a_corrupted_log_entry_is_reported_with_the_commits_it_hides(vol: Volume) -> None:
    path = vol.path_of(vol.keys.log(2))
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    damage = only(fsck.check(vol.repo))
    assert (damage.kind, damage.key) == ("corrupt-entry", vol.keys.log(2))
    assert damage.commits == (2, 3, 4, 5)


def test_an_unreadable_checkpoint_names_the_commits_read_through_it(vol: Volume) -> None:
    vol.repo.write_checkpoint(3)
    path = vol.path_of(vol.keys.checkpoint(3))
    path.write_bytes(path.read_bytes()[:-10])
    damage = only(fsck.check(vol.repo))
    assert (damage.kind, damage.key) == ("corrupt-checkpoint", vol.keys.checkpoint(3))
    assert damage.commits == (3, 4, 5)
    assert set(damage.files) == set(vol.repo.state(2).files)  # every file at it


def test_a_well_formed_checkpoint_that_disagrees_with_the_log_is_corrupt(vol: Volume) -> None:
    vol.repo.write_checkpoint(4)
    # A valid checkpoint object holding commit 2's files under seq 4.
    wrong = vol.repo.state(2)
    wrong.seq = 4
    vol.path_of(vol.keys.checkpoint(4)).write_bytes(vol.repo.checkpoint_bytes(wrong))
    damage = only(fsck.check(vol.repo))
    assert (damage.kind, damage.key) == ("corrupt-checkpoint", vol.keys.checkpoint(4))
    assert damage.commits == (4, 5)
    assert damage.files == ("a.txt", "big.bin")


def test_an_entry_replayed_at_another_position_is_foreign(vol: Volume) -> None:
    vol.path_of(vol.keys.log(3)).write_bytes(vol.path_of(vol.keys.log(2)).read_bytes())
    damage = only(fsck.check(vol.repo))
    assert (damage.kind, damage.key) == ("foreign-entry", vol.keys.log(3))
    assert damage.commits == (3, 4, 5)


def test_an_entry_of_another_volume_is_foreign(vol: Volume, tmp_path: Path) -> None:
    other = Repo.create(vol.repo.store)
    wc = WorkingCopy.create(other, tmp_path / "other")
    write(wc.root, "x.txt", "x")
    wc.commit()
    wc.close(final_commit=False)
    vol.path_of(vol.keys.log(5)).write_bytes(vol.path_of(other.keys.log(1)).read_bytes())
    damage = only(fsck.check(vol.repo))
    assert (damage.kind, damage.key) == ("foreign-entry", vol.keys.log(5))


@pytest.mark.parametrize(("path", "seq"), [("big.bin", 4), ("new.txt", 5)])
def test_a_record_whose_content_id_its_parts_do_not_give_is_a_bad_record(
    vol: Volume, path: str, seq: int
) -> None:
    payload = read_payload(vol.fs, vol.repo.volume_id, seq)
    ops = payload["ops"]
    assert isinstance(ops, list)
    (op,) = [op for op in ops if op[:2] == ["put", path]]
    op[5] = digest(b"something else")
    rewrite_entry(vol.fs, vol.repo.volume_id, seq, payload)
    damage = only(fsck.check(vol.repo))
    assert (damage.kind, damage.key) == ("bad-record", vol.keys.log(seq))
    assert damage.files == (path,)
    assert damage.commits == tuple(range(seq, 6))


def test_unreadable_metadata_is_damage(vol: Volume) -> None:
    vol.path_of(vol.keys.meta).write_bytes(b"{not json")
    damage = only(fsck.check(vol.repo))
    assert (damage.kind, damage.key) == ("corrupt-meta", vol.keys.meta)


def test_progress_reaches_the_total(vol: Volume) -> None:
    seen: list[tuple[int, int]] = []
    fsck.check(vol.repo, progress=lambda done, total: seen.append((done, total)))
    assert seen[0][0] == 0
    assert seen[-1][0] == seen[-1][1] > len(BIG)


# -- repair -------------------------------------------------------------------------------------


def test_repair_from_a_working_copy_restores_a_deleted_blob_and_pack(
    vol: Volume, tmp_path: Path
) -> None:
    blob = vol.key_of("copy.bin", 5, part=2)
    pack = vol.key_of("dir/d.txt", 5)
    assert pack == vol.key_of("new.txt", 5)
    expected = volume_tree(vol.repo)
    pack_bytes = vol.path_of(pack).read_bytes()
    vol.path_of(blob).unlink()
    vol.path_of(pack).unlink()
    report = fsck.check(vol.repo)
    assert {d.key for d in report.damage} == {blob, pack}

    done = fsck.repair(vol.repo, report, [vol.root])
    assert {r.key for r in done.repaired} == {blob, pack}
    assert done.not_repaired == ()
    assert vol.path_of(pack).read_bytes() == pack_bytes  # byte for byte
    assert fsck.check(vol.repo).ok
    assert fresh_tree(vol.repo, tmp_path / "fresh") == expected


def test_a_pack_holding_content_no_copy_has_is_reported_not_repaired(vol: Volume) -> None:
    # The pack of commit 1 held a.txt as it was before commit 3: no local file has that.
    pack = vol.key_of("dir/b.txt", 1)
    vol.path_of(pack).unlink()
    report = fsck.check_and_repair(vol.repo, [vol.root])
    assert report.repair is not None
    assert report.repair.repaired == ()
    assert [r.key for r in report.repair.not_repaired] == [pack]
    damage = only(report)
    assert (damage.kind, damage.key) == ("missing-object", pack)
    assert not vol.path_of(pack).exists()


def test_repair_from_a_node_content_cache(vol: Volume, tmp_path: Path) -> None:
    cache = ContentCache(tmp_path / "state" / "cache")
    cache.fill(vol.repo, list(vol.repo.state().files.values()))
    blob = vol.key_of("big.bin", 5, part=1)
    vol.path_of(blob).unlink()
    report = fsck.check_and_repair(vol.repo, [tmp_path / "state"])
    assert report.ok, report.damage
    assert report.repair is not None and [r.key for r in report.repair.repaired] == [blob]
    assert volume_tree(vol.repo)["big.bin"] == BIG2


def test_repair_searches_a_directory_for_the_copies_in_it(vol: Volume, tmp_path: Path) -> None:
    # Laid out as the node plugin keeps a copy: its files and its metadata side by side.
    state_dir = tmp_path / "state"
    work = state_dir / "pubs" / "some-pod"
    copy = WorkingCopy.create(vol.repo, work / "root", work / "meta")
    copy.close(final_commit=False)
    blob = vol.key_of("copy.bin", 5, part=0)
    pack = vol.key_of("new.txt", 5)
    vol.path_of(blob).unlink()
    vol.path_of(pack).unlink()
    report = fsck.check_and_repair(vol.repo, [state_dir])
    assert report.ok, report.damage
    assert report.repair is not None
    assert {r.key for r in report.repair.repaired} == {blob, pack}
    assert all(str(work / "root") in r.detail for r in report.repair.repaired)


def test_repair_of_a_damaged_pack_keeps_what_survived_of_it(vol: Volume, tmp_path: Path) -> None:
    # The pack of commit 1 held a.txt's first content, which no local file has any more:
    # its bytes can only come from the damaged pack itself.
    pack = vol.key_of("dir/b.txt", 1)
    path = vol.path_of(pack)
    data = bytearray(path.read_bytes())
    b_record = vol.repo.state(1).files["dir/b.txt"].parts[0]
    data[b_record.offset] ^= 0xFF
    path.write_bytes(bytes(data))
    report = fsck.check_and_repair(vol.repo, [vol.root])
    assert report.ok, report.damage
    assert volume_tree(vol.repo, 1)["a.txt"] == b"alpha"


def test_repair_never_writes_content_that_does_not_hash_right(vol: Volume) -> None:
    blob = vol.key_of("big.bin", 5, part=0)
    vol.path_of(blob).unlink()
    # The only local copy changed since it was committed.
    (vol.root / "big.bin").write_bytes(b"\x08" * len(BIG2))
    report = fsck.check_and_repair(vol.repo, [vol.root])
    assert report.repair is not None
    assert report.repair.repaired == ()
    assert [r.key for r in report.repair.not_repaired] == [blob]
    assert [d.key for d in report.damage] == [blob]
    assert not vol.path_of(blob).exists()


def test_repair_leaves_log_damage_reported(vol: Volume) -> None:
    vol.path_of(vol.keys.log(2)).unlink()
    report = fsck.check_and_repair(vol.repo, [vol.root])
    assert [d.kind for d in report.damage] == ["log-gap"]
    assert report.repair is not None and "log-gap" in report.repair.not_repaired[0].detail


def test_a_fifo_in_a_source_is_skipped_not_read(vol: Volume) -> None:
    blob = vol.key_of("big.bin", 5, part=0)
    vol.path_of(blob).unlink()
    os.unlink(vol.root / "big.bin")
    os.mkfifo(vol.root / "big.bin")
    report = fsck.check_and_repair(vol.repo, [vol.root])
    assert [d.key for d in report.damage] == [blob]


# -- MinIO --------------------------------------------------------------------------------------


@pytest.mark.s3
def test_fsck_finds_and_repairs_damage_on_minio(
    minio: MinioServer,  # noqa: F811 (fixture)
    s3_bucket: str,  # noqa: F811 (fixture)
    tmp_path: Path,
) -> None:
    store: Store = minio.store(s3_bucket, "fsck/")
    try:
        repo = Repo.create(store, chunk_size=CHUNK)
        wc, root = _build(repo, tmp_path / "wc")
        expected = volume_tree(repo)
        blob_record = repo.state().files["copy.bin"]
        blob = repo.keys.blob(blob_record.parts[1].obj)
        pack_part = repo.state().files["dir/b.txt"].parts[0]
        pack = repo.keys.pack(pack_part.obj)
        store.delete(blob)
        store.put(pack, store.get(pack)[:-1])
        report = fsck.check(repo)
        assert {(d.kind, d.key) for d in report.damage} == {
            ("missing-object", blob),
            ("size-mismatch", pack),
        }
        repaired = fsck.check_and_repair(repo, [root])
        assert repaired.ok, repaired.damage
        assert digest(store.get(pack)) == pack_part.obj
        assert fsck.check(repo).ok
        assert fresh_tree(repo, tmp_path / "fresh") == expected
        wc.close(final_commit=False)
    finally:
        store.close()


# -- the SDK --------------------------------------------------------------------------------------


def test_the_sdk_checks_and_repairs_a_named_volume(store: FilesystemStore, tmp_path: Path) -> None:
    catalog = Catalog(store)
    catalog.create("named")
    vol = kvol.Volume.from_name("named", store=store)
    with vol.batch_upload() as batch:
        batch.put_file(write(tmp_path / "src", "f.bin", BIG2), "/f.bin")
    assert vol.fsck().ok
    record = vol.repo.state().files["f.bin"]
    key = vol.repo.keys.blob(record.parts[0].obj)
    (store.root / key).unlink()
    assert [d.key for d in vol.fsck(verify_content=False).damage] == [key]
    # A node content cache that holds the file.
    cached = ContentCache(tmp_path / "cache").path(record)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(BIG2)
    report = vol.fsck(repair_from=[tmp_path / "cache"])
    assert report.ok and report.repair is not None and len(report.repair.repaired) == 1


def test_the_sdk_reports_damaged_metadata_instead_of_failing(
    store: FilesystemStore, tmp_path: Path
) -> None:
    meta = Catalog(store).create("named")
    with kvol.Volume.from_name("named", store=store).batch_upload() as batch:
        batch.put_file(write(tmp_path, "f.txt", "f"), "/f.txt")
    (store.root / VolumeKeys(meta.id).meta).write_bytes(b"garbage")
    report = kvol.Volume.from_name("named", store=store).fsck()
    # Only the metadata: the entries are still read and checked.
    assert [d.kind for d in report.damage] == ["corrupt-meta"]
    assert report.entries_checked == 1 and report.objects_checked == 1
