"""Reload and create never discard a local change, never trip over each other, and leave a
copy every command can use when they stop midway."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kvol import fsops
from kvol.content import ContentWriter
from kvol.errors import CorruptData
from kvol.model import FileRecord, Op, PutOp
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import CountingStore, object_files, tree, volume_tree, write

MakeWc = Callable[[str], WorkingCopy]


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# -- a local file where another writer made a directory ----------------------------------------


def test_reload_keeps_a_new_local_file_where_another_writer_made_a_directory(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    other = make_wc("other")
    write(wc.root, "p", "my uncommitted file")
    write(other.root, "p/x", "theirs")
    write(other.root, "p/sub/y", "theirs too")
    other.commit()

    result = wc.reload()

    assert (wc.root / "p").read_bytes() == b"my uncommitted file"
    assert "p" in result.kept_local
    # The remote files are in the volume and not here: reported as such.
    status = wc.status()
    assert "p" in status.changed
    assert {"p/x", "p/sub/y"} <= set(status.deleted)
    assert volume_tree(repo) == {"p/x": b"theirs", "p/sub/y": b"theirs too"}
    # This copy's commit is the later write: its file takes the path.
    wc.commit()
    assert volume_tree(repo) == {"p": b"my uncommitted file"}
    other.reload()
    assert tree(other.root) == {"p": b"my uncommitted file"}


def test_reload_keeps_a_changed_file_another_writer_replaced_with_a_directory(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    write(wc.root, "p", "v1")
    wc.commit()
    other = make_wc("other")
    write(wc.root, "p", "my edit, not committed")
    (other.root / "p").unlink()
    write(other.root, "p/x", "theirs")
    other.commit()

    result = wc.reload()

    assert (wc.root / "p").read_bytes() == b"my edit, not committed"
    assert "p" in result.kept_local
    wc.commit()
    assert volume_tree(repo) == {"p": b"my edit, not committed"}


def test_reload_never_unlinks_a_local_file_standing_where_a_directory_of_the_volume_was(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    write(wc.root, "d/x", "x")
    wc.commit()
    other = make_wc("other")
    # Here d became a file (not committed); there a file is added under d.
    shutil.rmtree(wc.root / "d")
    write(wc.root, "d", "my file")
    write(other.root, "d/y", "theirs")
    other.commit()

    result = wc.reload()

    assert (wc.root / "d").read_bytes() == b"my file"
    assert "d" in result.kept_local
    assert result.to_seq == 2
    assert {"d/x", "d/y"} <= set(wc.status().deleted)


def test_a_clean_file_gives_way_to_the_directory_another_writer_made(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    write(wc.root, "p", "v1")
    wc.commit()
    other = make_wc("other")
    (other.root / "p").unlink()
    write(other.root, "p/x", "theirs")
    other.commit()
    wc.reload()
    assert tree(wc.root) == {"p/x": b"theirs"}
    assert wc.commit().seq is None


# -- parallel downloads into new directories --------------------------------------------------


def test_concurrent_creation_of_the_same_directories_never_fails(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    root_fd = fsops.open_root(str(root))
    errors: list[BaseException] = []
    try:
        for round_no in range(40):
            rel = f"r{round_no}/a/b/c/d"
            barrier = threading.Barrier(8)

            def make(rel: str = rel, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                try:
                    fsops.make_dirs(root_fd, rel)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=make) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        os.close(root_fd)
    assert errors == []
    assert all((root / f"r{i}/a/b/c/d").is_dir() for i in range(40))


def test_reload_of_many_files_in_new_directories_never_fails(repo: Repo, wc: WorkingCopy) -> None:
    # Files published without directory records (as the SDK's put does): the reload makes
    # their directories while downloading them, in parallel.
    expected: dict[str, bytes] = {}
    for round_no in range(20):
        with ContentWriter(repo.store, repo.keys, repo.meta.chunk_size) as writer:
            futures = {
                f"n{round_no}/{i % 2}/deep/f{i}": writer.add_bytes(f"{round_no}-{i}".encode())
                for i in range(40)
            }
            writer.finish()
        ops: list[Op] = []
        for rel, future in futures.items():
            up = future.result()
            ops.append(PutOp(rel, FileRecord(up.size, 0, 0o644, up.hash, up.parts)))
            expected[rel] = f"{rel.split('/')[0][1:]}-{rel.rsplit('f', 1)[1]}".encode()
        repo.publish(ops, round_no)
        wc.reload()
    assert tree(wc.root) == expected


def test_creating_a_directory_never_removes_a_file_in_its_way(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("mine")
    root_fd = fsops.open_root(str(tmp_path))
    try:
        with pytest.raises(NotADirectoryError):
            fsops.make_dirs(root_fd, "f/sub")
    finally:
        os.close(root_fd)
    assert (tmp_path / "f").read_text() == "mine"


# -- stopped midway ---------------------------------------------------------------------------


def test_a_failed_create_leaves_nothing_and_can_be_retried(
    repo: Repo, store: CountingStore, wc: WorkingCopy, tmp_path: Path
) -> None:
    for i in range(20):
        write(wc.root, f"d{i % 3}/f{i}", os.urandom(3000))
    write(wc.root, "big", os.urandom(600_000))
    wc.commit()
    blob = object_files(store, repo.volume_id, "blobs")[0]
    flip_a_byte(blob)

    target = tmp_path / "fresh"
    with pytest.raises(CorruptData):
        WorkingCopy.create(repo, target)
    assert not target.exists()

    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(CorruptData):
        WorkingCopy.create(repo, existing)
    assert list(existing.iterdir()) == []

    flip_a_byte(blob)
    copy = WorkingCopy.create(repo, existing)
    try:
        assert tree(copy.root) == tree(wc.root)
        assert copy.status().changed == ()
    finally:
        copy.close(final_commit=False)


def test_a_killed_create_is_made_again_by_the_next_create(
    repo: Repo, wc: WorkingCopy, tmp_path: Path
) -> None:
    write(wc.root, "a", "a")
    wc.commit()
    target = tmp_path / "fresh"
    copy = WorkingCopy.create(repo, target)
    copy.close(final_commit=False)
    # What a create killed before it finished leaves: files, no configuration, its marker.
    (target / ".kvol" / "config.json").unlink()
    (target / ".kvol" / "creating").write_bytes(b"")
    write(target, "half/written", "x")

    again = WorkingCopy.create(repo, target)
    try:
        assert tree(again.root) == {"a": b"a"}
        assert again.status().base_seq == 1
    finally:
        again.close(final_commit=False)


def test_a_reload_stopped_by_corrupt_content_leaves_a_usable_copy_that_reverts_nothing(
    repo: Repo, store: CountingStore, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    write(wc.root, "gone/x", "x")
    write(wc.root, "stays", "v1")
    wc.commit()
    other = make_wc("other")
    write(other.root, "mine", "local change")

    shutil.rmtree(wc.root / "gone")
    for i in range(30):
        write(wc.root, f"new/{i % 4}/f{i}", f"file {i}")
    write(wc.root, "stays", "v2")
    write(wc.root, "big", os.urandom(600_000))
    wc.commit()
    blob = object_files(store, repo.volume_id, "blobs")[0]
    flip_a_byte(blob)

    before = tree(other.root)
    with pytest.raises(CorruptData):
        other.reload()
    # Nothing of it was applied: no file written, none removed, no temporary left.
    assert tree(other.root) == before
    assert not any(fsops.TEMP_PREFIX in str(p) for p in other.root.rglob("*"))
    assert not (other.root / "new").exists()

    # Every command still works, here and in a process that opens the copy afresh.
    for copy in (other, WorkingCopy.open(other.root, store=store)):
        status = copy.status()
        assert status.base_seq == 1
        assert status.changed == ("mine",)
    # The next commit publishes the local change and nothing the reload wrote or removed.
    write(wc.root, "stays", "v3")
    write(wc.root, "new/0/f0", "newer")
    wc.commit()
    result = other.commit()
    assert result.files == 1 and result.deleted == 0
    files = repo.state().files
    assert set(files) >= {"stays", "new/0/f0", "mine", "big"}
    assert "gone/x" not in files
    reader = repo.reader()
    assert reader.read(files["stays"]) == b"v3"
    assert reader.read(files["new/0/f0"]) == b"newer"

    flip_a_byte(blob)
    other.reload()
    assert tree(other.root) == tree(wc.root) | {"mine": b"local change"}


def test_a_reloads_workers_create_staged_files_one_at_a_time_and_fill_them_together(
    repo: Repo, make_wc: MakeWc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creation in the one staging directory is the kernel's to serialize (some spin while
    they wait: three times the CPU of one creator on a small machine); the content, fetched
    and written, is what gains from many workers."""
    writer, reader = make_wc("writer"), make_wc("reader")
    for i in range(40):
        write(writer.root, f"f{i}", f"file {i}")
    writer.commit()
    busy = {"create": 0, "fill": 0}
    most = {"create": 0, "fill": 0}
    lock = threading.Lock()

    def counted(what: str, real: Callable[..., int]) -> Callable[..., int]:
        def run(*args: object, **kwargs: object) -> int:
            with lock:
                busy[what] += 1
                most[what] = max(most[what], busy[what])
            try:
                threading.Event().wait(0.002)  # long enough for the others to overlap
                return real(*args, **kwargs)
            finally:
                with lock:
                    busy[what] -= 1

        return run

    monkeypatch.setattr(fsops, "_create", counted("create", fsops._create))
    monkeypatch.setattr(fsops, "_fill_new", counted("fill", fsops._fill_new))
    assert reader.concurrency > 1
    assert reader.reload().files == 40
    assert most["create"] == 1
    assert most["fill"] > 1
    assert tree(reader.root) == {f"f{i}": f"file {i}".encode() for i in range(40)}
