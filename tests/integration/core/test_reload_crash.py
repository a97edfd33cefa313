"""kill -9 of a reloading (or creating) process at chosen points: what it wrote is never
mistaken for local changes, so the next commit reverts no other writer, and a killed create
is made again by the next one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.errors import NotFound
from kvol.repo import Repo
from kvol.store import FilesystemStore
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import tree, volume_tree, write

# The child stops (and waits to be killed) right before its ``kill_at``-th call of the
# named functions of kvol.fsops (by default those that land a file in the tree:
# write_file, or install_file where content is staged first), or, with -1, right before
# it saves the index at the end.
CHILD = """
import sys, time
from kvol import fsops
from kvol.index import Index
from kvol.store import FilesystemStore
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy

action, root, store_root, volume_id, kill_at, names = sys.argv[1:7]
kill_at = int(kill_at)
real_save = Index.save
count = 0


def stop():
    print("stop", flush=True)
    time.sleep(600)


def counted(real):
    def landing(*args, **kwargs):
        global count
        if count == kill_at:
            stop()
        count += 1
        return real(*args, **kwargs)

    return landing


def save(self, path):
    if kill_at < 0:
        stop()
    return real_save(self, path)


for name in names.split(","):
    if hasattr(fsops, name):
        setattr(fsops, name, counted(getattr(fsops, name)))
Index.save = save
store = FilesystemStore(store_root)
if action == "reload":
    WorkingCopy.open(root, store=store, concurrency=1).reload()
elif action == "commit":
    WorkingCopy.open(root, store=store, concurrency=1).commit()
else:
    WorkingCopy.create(Repo(store, volume_id), root, concurrency=1)
print("done", flush=True)
"""


LANDING = "write_file,install_file"


def run_and_kill(
    action: str, root: Path, store: FilesystemStore, repo: Repo, at: int, names: str = LANDING
) -> None:
    args = [action, str(root), str(store.root), repo.volume_id, str(at), names]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "stop", "the child never reached its point"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)


@pytest.fixture
def volume(tmp_path: Path) -> tuple[FilesystemStore, Repo]:
    store = FilesystemStore(tmp_path / "store")
    Catalog(store).create("vol")
    return store, Catalog(store).repo("vol")


@pytest.mark.parametrize("kill_at", [0, 1, 4, 9, -1])
def test_a_reload_killed_midway_never_makes_the_next_commit_revert_other_writers(
    volume: tuple[FilesystemStore, Repo], tmp_path: Path, kill_at: int
) -> None:
    reload_killed_then_commit(volume, tmp_path, kill_at, LANDING)


@pytest.mark.parametrize(
    ("names", "kill_at"),
    [
        ("stage_file", 0),
        ("stage_file", 5),
        ("remove_file", 0),
        ("remove_file", 1),
        ("remove_empty_dir", 0),
        ("make_dirs", 0),
        ("write_atomically", 0),
    ],
)
def test_a_reload_killed_while_staging_or_deleting_reverts_nothing_either(
    volume: tuple[FilesystemStore, Repo], tmp_path: Path, names: str, kill_at: int
) -> None:
    reload_killed_then_commit(volume, tmp_path, kill_at, names)


def reload_killed_then_commit(
    volume: tuple[FilesystemStore, Repo], tmp_path: Path, kill_at: int, names: str
) -> None:
    store, repo = volume
    writer = WorkingCopy.create(repo, tmp_path / "writer")
    for i in range(8):
        write(writer.root, f"f{i}", "v1")
    write(writer.root, "old/a", "v1")
    write(writer.root, "old/b", "v1")
    writer.commit()
    copy = WorkingCopy.create(repo, tmp_path / "copy")
    copy.close(final_commit=False)

    # A commit for the reload to apply: changes, a deleted tree, a new one.
    for i in range(8):
        write(writer.root, f"f{i}", "v2")
    shutil.rmtree(writer.root / "old")
    for i in range(3):
        write(writer.root, f"new/g{i}", "v2")
    writer.commit()

    run_and_kill("reload", copy.root, store, repo, kill_at, names)

    # Meanwhile the writer commits again, over everything the killed reload touched.
    for i in range(8):
        write(writer.root, f"f{i}", "v3")
    write(writer.root, "new/g0", "v3")
    write(writer.root, "old/a", "v3")
    writer.commit()
    expected = tree(writer.root)
    assert volume_tree(repo) == expected

    again = WorkingCopy.open(copy.root, store=store)
    try:
        status = again.status()
        result = again.commit()
        assert volume_tree(repo) == expected, f"the commit after the kill ({result}) reverted"
        assert (status.changed, status.deleted, result.seq) == ((), (), None)
        again.reload()
        assert tree(again.root) == expected
        assert not any(p.name.startswith(".kvol-tmp-") for p in again.root.rglob("*"))
    finally:
        again.close(final_commit=False)
        writer.close(final_commit=False)


def test_a_killed_create_leaves_no_copy_and_the_next_create_makes_it(
    volume: tuple[FilesystemStore, Repo], tmp_path: Path
) -> None:
    store, repo = volume
    writer = WorkingCopy.create(repo, tmp_path / "writer")
    for i in range(10):
        write(writer.root, f"d/f{i}", f"file {i}")
    writer.commit()
    writer.close(final_commit=False)

    target = tmp_path / "copy"
    run_and_kill("create", target, store, repo, 4)

    with pytest.raises(NotFound):
        WorkingCopy.open(target, store=store)
    copy = WorkingCopy.create(repo, target)
    try:
        assert tree(copy.root) == volume_tree(repo)
        assert copy.status().changed == ()
        assert copy.commit().seq is None
    finally:
        copy.close(final_commit=False)


def test_a_commit_killed_after_publishing_never_makes_the_next_commit_revert_others(
    volume: tuple[FilesystemStore, Repo], tmp_path: Path
) -> None:
    store, repo = volume
    copy = WorkingCopy.create(repo, tmp_path / "copy")
    other = WorkingCopy.create(repo, tmp_path / "other")
    for i in range(4):
        write(copy.root, f"f{i}", "mine")
    write(copy.root, "d/x", "mine")
    copy.close(final_commit=False)

    # Killed after its entry landed, before its index recorded it.
    run_and_kill("commit", copy.root, store, repo, -1)
    assert volume_tree(repo) == {**{f"f{i}": b"mine" for i in range(4)}, "d/x": b"mine"}

    # Another writer then changes and deletes what that commit published.
    other.reload()
    write(other.root, "f0", "theirs, later")
    (other.root / "f1").unlink()
    shutil.rmtree(other.root / "d")
    other.commit()
    expected = tree(other.root)

    again = WorkingCopy.open(copy.root, store=store)
    try:
        result = again.commit()
        assert volume_tree(repo) == expected, f"the commit after the kill ({result}) reverted"
        assert result.seq is None
        again.reload()
        assert tree(again.root) == expected
    finally:
        again.close(final_commit=False)
        other.close(final_commit=False)
