"""What a commit publishes for deletions and odd files: a deletion names only what the copy
saw, special files are skipped without blocking, and set-id bits never travel."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from kvol import model
from kvol.content import ContentWriter
from kvol.model import DeleteOp, FileRecord, MkdirOp, PutOp
from kvol.repo import Repo
from kvol.workcopy import CommitResult, ScanResult, WorkingCopy
from tests.unit.core.helpers import entry, tree, volume_tree, write

MakeWc = Callable[[str], WorkingCopy]


# -- rm -r names what the copy saw ------------------------------------------------------------


def test_rm_r_and_commit_keeps_a_file_another_writer_added_under_the_directory(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    write(wc.root, "d/seen", "seen")
    write(wc.root, "d/sub/deep", "deep")
    write(wc.root, "keep", "k")
    wc.commit()
    other = make_wc("other")

    # The other writer adds a file under d and commits first...
    write(other.root, "d/sub/new", "theirs")
    other.commit()
    # ...then this copy, which never saw d/sub/new, removes d as a whole.
    shutil.rmtree(wc.root / "d")
    result = wc.commit()

    assert result.seq is not None
    assert volume_tree(repo) == {"keep": b"k", "d/sub/new": b"theirs"}
    ops = entry(repo, result.seq).ops
    assert not any(isinstance(op, DeleteOp) for op in ops)
    UnlinkOp, RmdirOp = model.UnlinkOp, model.RmdirOp
    assert set(ops) == {
        UnlinkOp("d/seen"),
        UnlinkOp("d/sub/deep"),
        RmdirOp("d/sub"),
        RmdirOp("d"),
    }
    # Each directory after everything under it.
    assert ops.index(RmdirOp("d/sub")) < ops.index(RmdirOp("d"))
    assert ops.index(UnlinkOp("d/sub/deep")) < ops.index(RmdirOp("d/sub"))

    wc.reload()
    assert tree(wc.root) == {"keep": b"k", "d/sub/new": b"theirs"}
    assert wc.commit().seq is None


def test_a_directory_replaced_by_a_file_names_the_files_it_held(
    repo: Repo, wc: WorkingCopy
) -> None:
    write(wc.root, "d/a", "a")
    write(wc.root, "d/b", "b")
    wc.commit()
    shutil.rmtree(wc.root / "d")
    write(wc.root, "d", "now a file")
    result = wc.commit()

    assert result.seq is not None
    assert volume_tree(repo) == {"d": b"now a file"}
    ops = entry(repo, result.seq).ops
    assert [type(op) for op in ops] == [model.UnlinkOp, model.UnlinkOp, model.RmdirOp, PutOp]
    assert result.deleted == 3


def test_a_deleted_file_never_published_needs_no_deletion(repo: Repo, wc: WorkingCopy) -> None:
    write(wc.root, "a", "a")
    wc.commit()
    write(wc.root, "d/x", "x")
    os.mkdir(wc.root / "e")
    wc.commit()
    shutil.rmtree(wc.root / "d")
    os.rmdir(wc.root / "e")
    result = wc.commit()
    assert result.seq is not None
    assert set(entry(repo, result.seq).ops) == {
        model.UnlinkOp("d/x"),
        model.RmdirOp("d"),
        model.RmdirOp("e"),
    }
    assert MkdirOp("e") in entry(repo, result.seq - 1).ops


# -- special files ----------------------------------------------------------------------------


class FifoAfterScan(WorkingCopy):
    """A copy in which a file is replaced by a FIFO between the scan and the read: what a
    program in the copy can do at any moment."""

    victim = "f"

    def _scan(self) -> ScanResult:
        found = super()._scan()
        path = self.root / self.victim
        path.unlink()
        os.mkfifo(path)
        return found


def commit_within(wc: WorkingCopy, fifo: Path, seconds: float) -> CommitResult:
    results: list[CommitResult] = []
    worker = threading.Thread(target=lambda: results.append(wc.commit()), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        # Release the blocked reader so the test process can end, then fail.
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(10)
        raise AssertionError("commit blocked on a FIFO")
    return results[0]


def test_a_file_replaced_by_a_fifo_is_skipped_and_never_blocks_commit(
    repo: Repo, tmp_path: Path
) -> None:
    wc = FifoAfterScan.create(repo, tmp_path / "wc")
    try:
        write(wc.root, "f", "small")
        write(wc.root, "other", "published")
        result = commit_within(wc, wc.root / "f", 10)
        assert result.skipped == ("f",)
        assert volume_tree(repo) == {"other": b"published"}
    finally:
        wc.close(final_commit=False)


def test_a_large_file_replaced_by_a_fifo_is_skipped_and_never_blocks_commit(
    repo: Repo, tmp_path: Path
) -> None:
    wc = FifoAfterScan.create(repo, tmp_path / "wc")
    try:
        write(wc.root, "f", os.urandom(600_000))
        result = commit_within(wc, wc.root / "f", 10)
        assert result.skipped == ("f",)
        assert result.seq is None
    finally:
        wc.close(final_commit=False)


def test_special_files_found_by_the_scan_are_reported_as_skipped(
    repo: Repo, wc: WorkingCopy
) -> None:
    write(wc.root, "f", "file")
    os.mkfifo(wc.root / "pipe")
    os.symlink("f", wc.root / "link")
    result = wc.commit()
    assert result.skipped == ("link", "pipe")
    assert volume_tree(repo) == {"f": b"file"}


def test_a_committed_file_replaced_by_a_fifo_is_deleted_without_blocking(
    repo: Repo, tmp_path: Path
) -> None:
    wc = WorkingCopy.create(repo, tmp_path / "wc")
    try:
        write(wc.root, "f", "one")
        wc.commit()
        (wc.root / "f").unlink()
        os.mkfifo(wc.root / "f")
        result = commit_within(wc, wc.root / "f", 10)
        assert result.skipped == ("f",)
        assert volume_tree(repo) == {}
    finally:
        wc.close(final_commit=False)


# -- modes ------------------------------------------------------------------------------------


def put_with_mode(repo: Repo, path: str, data: bytes, mode: int, base: int) -> int:
    with ContentWriter(repo.store, repo.keys, repo.meta.chunk_size) as writer:
        future = writer.add_bytes(data)
        writer.finish()
        up = future.result()
    return repo.publish([PutOp(path, FileRecord(up.size, 0, mode, up.hash, up.parts))], base)


def test_setuid_setgid_and_sticky_bits_from_the_volume_are_never_applied(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    # Another writer (any program with store access) publishes set-id files.
    seq = put_with_mode(repo, "suid", b"#!/bin/sh\n", 0o4755, 0)
    seq = put_with_mode(repo, "sgid", b"#!/bin/sh\n", 0o2750, seq)
    put_with_mode(repo, "sticky", b"x", 0o1777, seq)

    fresh = make_wc("fresh")  # materialized by a create
    wc.reload()  # and by a reload
    for copy in (fresh, wc):
        modes = {
            n: stat.S_IMODE(os.lstat(copy.root / n).st_mode) for n in ("suid", "sgid", "sticky")
        }
        assert modes == {"suid": 0o755, "sgid": 0o750, "sticky": 0o777}
        assert copy.status().changed == ()
        assert copy.commit().seq is None  # masking is not a local change


def test_set_id_bits_set_in_a_copy_are_not_published(repo: Repo, wc: WorkingCopy) -> None:
    path = write(wc.root, "tool", "#!/bin/sh\n")
    os.chmod(path, 0o6755)
    wc.commit()
    assert repo.state().files["tool"].mode == 0o755
