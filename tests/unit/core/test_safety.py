"""Hostile or damaged data in the store, and hostile trees in the working copy: rejected,
never half-applied, never followed outside the copy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kvol import codec, fsops
from kvol.errors import CorruptData, InvalidPath, KvolError
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import (
    CountingStore,
    object_files,
    read_payload,
    rewrite_entry,
    tree,
    volume_tree,
    write,
)

MakeWc = Any


def snapshot(root: Path) -> list[tuple[str, bytes | None]]:
    """Every name under ``root`` (directories and links too) with file contents."""
    found: list[tuple[str, bytes | None]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if rel.startswith(".kvol"):
                continue
            if os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as f:
                    found.append((rel, f.read()))
            else:
                found.append((rel, None))
    return sorted(found)


# -- tampered log entries -----------------------------------------------------------------------


@pytest.fixture
def two_copies(repo: Repo, wc: WorkingCopy, make_wc: MakeWc) -> tuple[WorkingCopy, WorkingCopy]:
    write(wc.root, "a.txt", "original a")
    write(wc.root, "dir/b.txt", "original b")
    wc.commit()
    return wc, make_wc("other")


@pytest.mark.parametrize(
    "bad_path",
    ["../x", "../../escaped", "/etc/kvol-escape", "dir/../../x", ".kvol/config.json", "a\x00b", ""],
)
def test_a_tampered_entry_is_rejected_and_nothing_of_it_is_applied(
    repo: Repo,
    store: CountingStore,
    two_copies: tuple[WorkingCopy, WorkingCopy],
    tmp_path: Path,
    bad_path: str,
) -> None:
    writer, reader = two_copies
    # A real commit, then the attacker's: the same entry with one bad path added.
    write(writer.root, "a.txt", "changed a")
    write(writer.root, "new.txt", "new")
    seq = writer.commit().seq
    assert seq == 2
    payload = read_payload(store, repo.volume_id, seq)
    good_put = payload["ops"][0]  # type: ignore[index]
    payload["ops"].append(["put", bad_path, *good_put[2:]])  # type: ignore[attr-defined]
    rewrite_entry(store, repo.volume_id, seq, payload)

    before = snapshot(tmp_path)
    with pytest.raises(CorruptData, match=r"unsafe path|not a string"):
        reader.reload()
    assert snapshot(tmp_path) == before  # nothing in or around either copy changed
    assert reader.status().base_seq == 1
    assert not (tmp_path.parent / "x").exists()
    with pytest.raises(CorruptData):
        repo.state()


def test_a_bad_entry_after_good_ones_blocks_the_whole_reload(
    repo: Repo, store: CountingStore, two_copies: tuple[WorkingCopy, WorkingCopy]
) -> None:
    writer, reader = two_copies
    write(writer.root, "a.txt", "second")
    writer.commit()
    write(writer.root, "a.txt", "third")
    writer.commit()
    payload = read_payload(store, repo.volume_id, 3)
    payload["ops"] = [["del", "../../home"]]
    rewrite_entry(store, repo.volume_id, 3, payload)

    before = tree(reader.root)
    with pytest.raises(CorruptData):
        reader.reload()
    # Entry 2 is valid, but a reload is all or nothing.
    assert tree(reader.root) == before
    assert reader.status().base_seq == 1


def test_a_tampered_record_is_rejected(
    repo: Repo, store: CountingStore, two_copies: tuple[WorkingCopy, WorkingCopy]
) -> None:
    writer, reader = two_copies
    write(writer.root, "a.txt", "changed")
    writer.commit()
    payload = read_payload(store, repo.volume_id, 2)
    op = payload["ops"][0]  # type: ignore[index]
    op[2] = op[2] + 100  # size no longer matches its parts
    rewrite_entry(store, repo.volume_id, 2, payload)
    # Named, so that whoever sees it knows which file to remove or restore.
    with pytest.raises(CorruptData, match=r"volume file /a\.txt is unreadable: .*do not add up"):
        reader.reload()
    assert tree(reader.root)["a.txt"] == b"original a"


def test_a_forged_entry_without_a_valid_checksum_is_rejected(
    repo: Repo, store: CountingStore, two_copies: tuple[WorkingCopy, WorkingCopy]
) -> None:
    writer, reader = two_copies
    write(writer.root, "a.txt", "changed")
    writer.commit()
    path = store.root / repo.keys.log(2)
    raw = path.read_bytes()
    header = raw.partition(b"\n")[0]
    forged = codec.encode("entry", {"ops": [["del", "a.txt"]]}).partition(b"\n")[2]
    path.write_bytes(header + b"\n" + forged)
    with pytest.raises(CorruptData, match="checksum"):
        reader.reload()
    assert tree(reader.root)["a.txt"] == b"original a"


# -- content verified on read -------------------------------------------------------------------


def flip_a_byte(path: Path, at: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["blobs", "packs"])
def test_corrupt_content_in_the_store_is_detected(
    repo: Repo, store: CountingStore, wc: WorkingCopy, make_wc: MakeWc, kind: str
) -> None:
    other = make_wc("other")
    write(wc.root, "big", os.urandom(600_000))  # chunked: blobs
    for i in range(10):
        write(wc.root, f"small/{i}", os.urandom(1000))  # packed together
    wc.commit()

    objects = object_files(store, repo.volume_id, kind)
    assert objects
    flip_a_byte(objects[0], at=len(objects[0].read_bytes()) // 2)

    with pytest.raises(CorruptData, match="hash"):
        other.reload()
    assert other.status().base_seq == 0
    # No file with bad content, no leftover temporary file.
    damaged = {
        r
        for r, rec in repo.state().files.items()
        if any(objects[0].name == p.obj for p in rec.parts)
    }
    for rel, data in snapshot(other.root):
        assert fsops.TEMP_PREFIX not in rel
        assert rel not in damaged, f"{rel} was written from a corrupt object"
        if data is not None:
            assert data == (wc.root / rel).read_bytes()
    # What the failed reload did write is recorded: nothing looks like a local change,
    # also to a process that opens the copy afresh.
    status = other.status()
    assert (status.changed, status.deleted) == ((), ())
    reopened = WorkingCopy.open(other.root, store=store).status()
    assert (reopened.changed, reopened.deleted, reopened.base_seq) == ((), (), 0)

    with pytest.raises(CorruptData):
        volume_tree(repo)
    with pytest.raises(CorruptData):
        WorkingCopy.create(repo, other.root.parent / "fresh")

    # Once the object is repaired, the same reload succeeds.
    flip_a_byte(objects[0], at=len(objects[0].read_bytes()) // 2)
    other.reload()
    assert tree(other.root) == tree(wc.root)


def test_a_single_packed_file_read_by_range_is_verified(
    repo: Repo, store: CountingStore, wc: WorkingCopy
) -> None:
    for i in range(40):
        write(wc.root, f"f{i}", os.urandom(2000))
    wc.commit()
    pack = object_files(store, repo.volume_id, "packs")[0]
    record = repo.state().files["f7"]
    flip_a_byte(pack, at=record.parts[0].offset + 5)
    reader = repo.reader()
    with pytest.raises(CorruptData):
        reader.read(record)  # one file of forty: a ranged read, not the whole pack
    assert reader.read(repo.state().files["f8"]) == (wc.root / "f8").read_bytes()


def test_a_truncated_blob_is_detected(repo: Repo, store: CountingStore, wc: WorkingCopy) -> None:
    write(wc.root, "big", os.urandom(600_000))
    wc.commit()
    blob = object_files(store, repo.volume_id, "blobs")[0]
    blob.write_bytes(blob.read_bytes()[:-1])
    with pytest.raises(CorruptData):
        volume_tree(repo)


# -- symlinks -----------------------------------------------------------------------------------


def test_commit_never_follows_a_symlink_out_of_the_copy(
    repo: Repo, store: CountingStore, wc: WorkingCopy, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = b"SECRET-" + os.urandom(16).hex().encode()
    (outside / "secret.txt").write_bytes(secret)
    (outside / "dir").mkdir()
    (outside / "dir" / "inner.txt").write_bytes(secret + b"-inner")
    os.symlink(outside / "secret.txt", wc.root / "file-link")
    os.symlink(outside / "dir", wc.root / "dir-link")
    os.symlink("../../outside/secret.txt", wc.root / "relative-link")
    write(wc.root, "real.txt", "ordinary")

    wc.commit()

    assert set(repo.state().files) == {"real.txt"}
    assert not repo.state().is_dir("dir-link")
    for path in store.root.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), f"{path} holds the outside file"


def test_a_file_swapped_for_a_symlink_is_not_read(
    repo: Repo, store: CountingStore, wc: WorkingCopy, tmp_path: Path
) -> None:
    secret = b"SECRET-" + os.urandom(16).hex().encode()
    (tmp_path / "secret").write_bytes(secret)
    write(wc.root, "f", "committed")
    write(wc.root, "d/g", "committed")
    wc.commit()

    (wc.root / "f").unlink()
    os.symlink(tmp_path / "secret", wc.root / "f")
    (wc.root / "d" / "g").unlink()
    (wc.root / "d").rmdir()
    os.symlink(tmp_path, wc.root / "d")
    (tmp_path / "g").write_bytes(secret)
    wc.commit()

    assert set(repo.state().files) == set()
    for path in store.root.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes()


def test_opening_through_a_symlinked_directory_fails(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f").write_text("outside")
    os.symlink(tmp_path / "outside", root / "d")
    root_fd = fsops.open_root(str(root))
    try:
        with pytest.raises(OSError):
            fsops.open_file(root_fd, "d/f")
        with pytest.raises((OSError, InvalidPath)):
            fsops.write_file(root_fd, "d/new", lambda fd: None, mode=0o644, mtime_ns=0)
        assert fsops.lstat(root_fd, "d/f") is None
    finally:
        os.close(root_fd)
    assert sorted(os.listdir(tmp_path / "outside")) == ["f"]


def test_reload_through_a_directory_swapped_for_a_symlink_fails(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc, tmp_path: Path
) -> None:
    write(wc.root, "d/f", "volume's f")
    wc.commit()
    other = make_wc("other")

    write(wc.root, "d/f", "volume's f, changed")
    write(wc.root, "d/new", "a new file in d")
    wc.commit()

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("outside f")
    (other.root / "d" / "f").unlink()
    (other.root / "d").rmdir()
    os.symlink(outside, other.root / "d")

    with pytest.raises(KvolError):
        other.reload()
    assert sorted(os.listdir(outside)) == ["f"]
    assert (outside / "f").read_text() == "outside f"
    assert os.path.islink(other.root / "d")
    assert other.status().base_seq == 1


def test_reload_never_deletes_or_writes_through_symlinks(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc, tmp_path: Path
) -> None:
    write(wc.root, "d/f", "volume's f")
    write(wc.root, "e/g", "volume's g")
    write(wc.root, "link", "volume's link")
    wc.commit()
    other = make_wc("other")

    # Another writer deletes d/f and the directory e, and rewrites "link".
    (wc.root / "d" / "f").unlink()
    (wc.root / "e" / "g").unlink()
    (wc.root / "e").rmdir()
    write(wc.root, "link", "volume's link, changed")
    wc.commit()

    # Here, each of those was swapped for a symlink to something outside.
    outside = tmp_path / "outside"
    outside.mkdir()
    for name, content in (("f", "outside f"), ("g", "outside g"), ("target", "outside t")):
        (outside / name).write_text(content)
    for name in ("d", "e"):
        for child in (other.root / name).iterdir():
            child.unlink()
        (other.root / name).rmdir()
        os.symlink(outside, other.root / name)
    (other.root / "link").unlink()
    os.symlink(outside / "target", other.root / "link")

    other.reload()

    assert sorted(os.listdir(outside)) == ["f", "g", "target"]
    assert [(outside / n).read_text() for n in ("f", "g", "target")] == [
        "outside f",
        "outside g",
        "outside t",
    ]
