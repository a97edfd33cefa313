"""Working copies on a real directory and a real filesystem store."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kvol import index as index_module
from kvol.copybase import _file_sig
from kvol.errors import KvolError, NotFound, ReadOnly
from kvol.index import Index
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import CountingStore, log_seqs, tree, volume_tree, write

MakeWc = Callable[[str], WorkingCopy]


def age(root: Path, seconds: float = 60.0) -> None:
    """Set every file's mtime into the past, as for files written a while before a commit
    (files modified within the racy window are hashed again, by design). This changes
    every file's ctime: call it before the commit that records the files."""
    past = time.time() - seconds
    for dirpath, _dirs, files in os.walk(root):
        if "/.kvol" in dirpath + "/":
            continue
        for name in files:
            os.utime(os.path.join(dirpath, name), (past, past))


def read_bytes_of_process() -> int:
    """Bytes this process has read with read(2)/pread(2) so far (all threads)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


# -- commit -------------------------------------------------------------------------------------


def test_commit_publishes_files_dirs_and_modes(
    wc: WorkingCopy, repo: Repo, make_wc: MakeWc
) -> None:
    write(wc.root, "a.txt", "alpha")
    write(wc.root, "sub/deep/b.bin", os.urandom(300_000))
    (wc.root / "empty" / "dir").mkdir(parents=True)
    tool = write(wc.root, "bin/tool", "#!/bin/sh\n")
    tool.chmod(0o755)

    result = wc.commit("first")

    assert result.seq == 1
    assert result.files == 3
    assert result.bytes == 5 + 300_000 + 10
    state = repo.state()
    assert set(state.files) == {"a.txt", "sub/deep/b.bin", "bin/tool"}
    assert "empty/dir" in state.dirs
    assert state.files["bin/tool"].mode == 0o755
    assert volume_tree(repo) == tree(wc.root)
    assert repo.history()[0].message == "first"

    other = make_wc("other")
    assert tree(other.root) == tree(wc.root)
    assert (other.root / "empty" / "dir").is_dir()
    assert stat.S_IMODE((other.root / "bin" / "tool").stat().st_mode) == 0o755


def test_commit_publishes_deletions_of_files_and_directories(
    wc: WorkingCopy, repo: Repo, make_wc: MakeWc
) -> None:
    for i in range(5):
        write(wc.root, f"d/sub/f{i}", f"{i}")
    write(wc.root, "keep", "k")
    write(wc.root, "gone", "g")
    wc.commit()
    other = make_wc("other")

    (wc.root / "gone").unlink()
    for p in sorted((wc.root / "d").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (wc.root / "d").rmdir()
    result = wc.commit()

    # What the copy saw: the files d/sub/f0..f4 and "gone", then the directories d/sub and d.
    assert result.deleted == 8
    assert set(repo.state().files) == {"keep"}
    assert not repo.state().is_dir("d")
    other.reload()
    assert tree(other.root) == {"keep": b"k"}
    assert not (other.root / "d").exists()


def test_fresh_copy_is_clean(repo: Repo, wc: WorkingCopy, make_wc: MakeWc) -> None:
    """A file a working copy just downloaded is not a local change."""
    write(wc.root, "a.txt", "one")
    write(wc.root, "big", os.urandom(400_000))
    wc.commit()

    other = make_wc("other")

    status = other.status()
    assert status.changed == ()
    assert status.deleted == ()
    assert other.commit().seq is None


def test_reload_applies_a_change_to_a_file_this_copy_never_touched(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    write(wc.root, "a.txt", "one")
    wc.commit()
    other = make_wc("other")

    write(wc.root, "a.txt", "two, longer")
    wc.commit()
    result = other.reload()

    assert result.kept_local == ()
    assert (other.root / "a.txt").read_text() == "two, longer"
    # And the copy does not send the old content back as its own change.
    assert other.commit().seq is None
    assert volume_tree(repo)["a.txt"] == b"two, longer"


def test_noop_commit_reads_no_file_content(
    wc: WorkingCopy, store: CountingStore, repo: Repo
) -> None:
    write(wc.root, "big", os.urandom(4 << 20))
    for i in range(100):
        write(wc.root, f"small/{i}", os.urandom(2000))
    age(wc.root)
    assert wc.commit().seq == 1
    tree_bytes = (4 << 20) + 100 * 2000

    store.reset()
    before = read_bytes_of_process()
    result = wc.commit()
    read = read_bytes_of_process() - before

    assert result.seq is None
    assert store.count("put") == 0
    assert store.count("put_if_absent") == 0
    assert store.count("get_range") == 0
    assert store.count("get", repo.keys.blob_prefix) == 0
    assert store.count("get", repo.keys.pack_prefix) == 0
    # Reading the index and /proc costs a little; reading files would cost >= 4 MiB.
    assert read < tree_bytes // 20, f"a no-op commit read {read} bytes"
    assert log_seqs(store, repo.volume_id) == [1]


def test_commit_cost_grows_with_what_changed(
    wc: WorkingCopy, store: CountingStore, repo: Repo
) -> None:
    write(wc.root, "big", os.urandom(4 << 20))
    for i in range(100):
        write(wc.root, f"small/{i}", os.urandom(2000))
    age(wc.root)
    wc.commit()

    changed = write(wc.root, "small/7", b"x" * 3000)
    past = time.time() - 60
    os.utime(changed, (past, past))
    store.reset()
    before = read_bytes_of_process()
    result = wc.commit()
    read = read_bytes_of_process() - before

    assert result.files == 1
    assert result.bytes == 3000
    assert store.count("put", repo.keys.blob_prefix) == 0
    assert store.count("put", repo.keys.pack_prefix) == 1
    assert store.count("put_if_absent") == 1  # the log entry
    assert read < 200_000, f"committing one 3 KB file read {read} bytes"


def test_a_reload_in_a_new_process_parses_only_the_records_and_signatures_it_touches(
    wc: WorkingCopy, make_wc: MakeWc, repo: Repo
) -> None:
    for i in range(200):
        write(wc.root, f"d{i % 7}/{i}", f"file {i}")
    wc.commit()
    reader = make_wc("reader")
    reader.close(final_commit=False)
    write(wc.root, "d3/3", "changed")
    wc.commit()

    # Opened again, as a process starting does: every record is in the loaded columns.
    reader = WorkingCopy.open(reader.root, store=repo.store)
    try:
        assert reader.reload().files == 1
        parsed = [p for p, e in reader.index.files.items() if e._record is not None]
        assert parsed == ["d3/3"]
        read = [p for p, e in reader.index.files.items() if e._key is not index_module._IN_ROW]
        assert read == ["d3/3"]
        assert (reader.root / "d3/3").read_text() == "changed"
    finally:
        reader.close(final_commit=False)
    # Saved with the signatures left in their rows, the index reads back the same.
    reopened = WorkingCopy.open(reader.root, store=repo.store)
    try:
        status = reopened.status()
        assert status.changed == () and status.deleted == ()
    finally:
        reopened.close(final_commit=False)


def test_touched_but_unchanged_file_is_not_published(wc: WorkingCopy) -> None:
    path = write(wc.root, "a", "same")
    wc.commit()
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert wc.commit().seq is None


# -- reload -------------------------------------------------------------------------------------


def test_reload_applies_newer_entries_and_keeps_local_changes(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    for name in ("edited", "deleted", "theirs", "removed"):
        write(wc.root, name, f"base {name}")
    wc.commit()
    other = make_wc("other")

    # Another writer changes every file and removes one.
    for name in ("edited", "deleted", "theirs"):
        write(wc.root, name, f"theirs {name}")
    (wc.root / "removed").unlink()
    write(wc.root, "new/file", "theirs new")
    wc.commit()

    # Meanwhile this copy edits one file and deletes another, without committing.
    write(other.root, "edited", "mine, not committed")
    (other.root / "deleted").unlink()
    write(other.root, "local-only", "mine")

    result = other.reload()

    assert result.to_seq == 2
    assert set(result.kept_local) == {"edited", "deleted"}
    assert tree(other.root) == {
        "edited": b"mine, not committed",
        "theirs": b"theirs theirs",
        "new/file": b"theirs new",
        "local-only": b"mine",
    }
    assert other.status().base_seq == 2

    # The local changes are the last write once committed.
    other.commit()
    assert volume_tree(repo) == {
        "edited": b"mine, not committed",
        "theirs": b"theirs theirs",
        "new/file": b"theirs new",
        "local-only": b"mine",
    }


def test_reload_with_nothing_new_changes_nothing(wc: WorkingCopy) -> None:
    write(wc.root, "a", "1")
    wc.commit()
    result = wc.reload()
    assert (result.from_seq, result.to_seq, result.files) == (1, 1, 0)


def test_reload_replaces_a_file_with_a_directory_and_back(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    write(wc.root, "x", "file")
    wc.commit()
    other = make_wc("other")

    (wc.root / "x").unlink()
    write(wc.root, "x/inner", "now a directory")
    wc.commit()
    other.reload()
    assert tree(other.root) == {"x/inner": b"now a directory"}

    (wc.root / "x" / "inner").unlink()
    (wc.root / "x").rmdir()
    write(wc.root, "x", "a file again")
    wc.commit()
    other.reload()
    assert tree(other.root) == {"x": b"a file again"}


def test_open_resumes_a_copy_with_its_base(
    repo: Repo, wc: WorkingCopy, store: CountingStore
) -> None:
    write(wc.root, "a", "1")
    wc.commit()
    write(wc.root, "b", "uncommitted")

    again = WorkingCopy.open(wc.root, store=store)
    assert again.status().base_seq == 1
    assert again.status().changed == ("b",)
    assert again.commit().seq == 2
    assert volume_tree(repo) == {"a": b"1", "b": b"uncommitted"}


def test_open_of_a_plain_directory_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not a kvol working copy"):
        WorkingCopy.open(tmp_path)


# -- autocommit and close -----------------------------------------------------------------------


def test_autocommit_publishes_without_an_explicit_commit(repo: Repo, wc: WorkingCopy) -> None:
    wc.start_autocommit(0.05)
    try:
        write(wc.root, "auto.txt", "by the loop")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "auto.txt" not in repo.state().files:
            time.sleep(0.02)
        assert volume_tree(repo) == {"auto.txt": b"by the loop"}

        write(wc.root, "second.txt", "later")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "second.txt" not in repo.state().files:
            time.sleep(0.02)
        assert set(repo.state().files) == {"auto.txt", "second.txt"}
    finally:
        wc.stop_autocommit()
    assert wc.autocommit_error is None


def test_close_makes_the_final_commit(repo: Repo, tmp_path: Path) -> None:
    copy = WorkingCopy.create(repo, tmp_path / "c")
    copy.start_autocommit(3600)  # never ticks: only the final commit can publish
    write(copy.root, "last-words", "written just before the end")
    result = copy.close()
    assert result is not None and result.seq == 1
    assert volume_tree(repo) == {"last-words": b"written just before the end"}


def test_context_manager_commits_on_exit(repo: Repo, tmp_path: Path) -> None:
    with WorkingCopy.create(repo, tmp_path / "c") as copy:
        write(copy.root, "f", "x")
    assert volume_tree(repo) == {"f": b"x"}


def test_failed_final_commit_raises_and_keeps_the_files(
    repo: Repo, store: CountingStore, tmp_path: Path
) -> None:
    copy = WorkingCopy.create(repo, tmp_path / "c")
    write(copy.root, "kept", "must not be lost")
    write(copy.root, "big", os.urandom(300_000))
    saved = store.root.with_name("store-moved")
    # The store's directory disappears and a plain file stands in its place.
    store.root.rename(saved)
    store.root.write_text("not a store")

    with pytest.raises(KvolError):
        copy.close()

    assert tree(copy.root)["kept"] == b"must not be lost"
    assert copy.status().changed == ("big", "kept")

    # Once the store is back, the close can be retried and publishes everything.
    store.root.unlink()
    saved.rename(store.root)
    result = copy.close()
    assert result is not None and result.seq == 1
    assert volume_tree(repo) == tree(copy.root)


# -- edge cases ---------------------------------------------------------------------------------


def test_a_rewrite_within_the_timestamp_granularity_is_not_missed(
    repo: Repo, wc: WorkingCopy
) -> None:
    path = write(wc.root, "f", "aaaa")
    wc.commit()
    st = path.stat()
    path.write_text("bbbb")  # same size, and likely the same coarse mtime
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert wc.commit().seq == 2
    assert volume_tree(repo) == {"f": b"bbbb"}


def test_a_mode_change_alone_is_published_and_applied(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    path = write(wc.root, "run.sh", "#!/bin/sh\n")
    wc.commit()
    other = make_wc("other")
    path.chmod(0o755)
    assert wc.commit().seq == 2
    other.reload()
    assert stat.S_IMODE((other.root / "run.sh").stat().st_mode) == 0o755


def test_both_create_the_same_path_and_the_local_one_is_the_last_write(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    other = make_wc("other")
    write(wc.root, "same", "theirs")
    wc.commit()
    write(other.root, "same", "mine")
    result = other.reload()
    assert result.kept_local == ("same",)
    assert (other.root / "same").read_text() == "mine"
    other.commit()
    assert volume_tree(repo) == {"same": b"mine"}
    wc.reload()
    assert (wc.root / "same").read_text() == "mine"


def test_a_local_edit_survives_a_remote_delete(
    repo: Repo, wc: WorkingCopy, make_wc: MakeWc
) -> None:
    write(wc.root, "f", "base")
    wc.commit()
    other = make_wc("other")
    (wc.root / "f").unlink()
    wc.commit()
    write(other.root, "f", "edited here")
    assert other.reload().kept_local == ("f",)
    assert (other.root / "f").read_text() == "edited here"
    other.commit()
    assert volume_tree(repo) == {"f": b"edited here"}


def test_empty_files_and_unusual_names(repo: Repo, wc: WorkingCopy, make_wc: MakeWc) -> None:
    names = ["empty", "with space", "ünïcödé/файл", "a-b_c.d/e f", "-dash", "x" * 255]
    for name in names:
        write(wc.root, name, b"" if name == "empty" else name.encode())
    wc.commit()
    assert volume_tree(repo) == tree(wc.root)
    other = make_wc("other")
    assert tree(other.root) == tree(wc.root)
    assert (other.root / "empty").stat().st_size == 0


def test_create_needs_an_empty_directory(repo: Repo, tmp_path: Path) -> None:
    write(tmp_path / "full", "something", "x")
    with pytest.raises(KvolError, match="not empty"):
        WorkingCopy.create(repo, tmp_path / "full")


def test_a_read_only_copy_refuses_to_commit(repo: Repo, wc: WorkingCopy, tmp_path: Path) -> None:
    write(wc.root, "f", "x")
    wc.commit()
    ro = WorkingCopy.create(repo, tmp_path / "ro", read_only=True)
    assert tree(ro.root) == {"f": b"x"}
    write(ro.root, "g", "local")
    with pytest.raises(ReadOnly):
        ro.commit()
    assert ro.close() is None
    assert set(repo.state().files) == {"f"}


def test_another_save_of_the_index_is_seen_even_with_the_same_stat(tmp_path: Path) -> None:
    # Two saves of one index differ (every base has its own generation) yet may keep
    # the inode, size and time (a freed inode reused within the clock's granularity):
    # a copy that took them for the same would go on with an index another process
    # replaced, and save over its changes.
    path = tmp_path / "index"
    index = Index("0" * 32, 3)
    index.save(path)
    seen = _file_sig(path)
    st = os.stat(path)
    Index("0" * 32, 3).save(tmp_path / "other")
    replaced = (tmp_path / "other").read_bytes()
    assert len(replaced) == st.st_size and replaced != path.read_bytes()
    with open(path, "r+b") as f:
        f.write(replaced)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
    )
    assert _file_sig(path) != seen
