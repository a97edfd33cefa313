"""The busy check places a held file by its path only where the path proves where the file
is; every other file is looked up by walking the copy. Each placement is checked against
the walk, on a tree with bind mounts both ways, a second link and a symlinked directory;
and real processes hold copy files by paths that do not prove it (a second link, another
mount namespace)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.busy import _inodes_in, _Placer
from kvol.workcopy import WorkingCopy
from tests.integration.core.holders import HOLD_OPEN, reload_refused_for, start, stop
from tests.unit.core.helpers import write


def _bind(source: Path, target: Path, mounted: list[Path]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    mounted.append(target)


@pytest.fixture
def mounted() -> Iterator[list[Path]]:
    points: list[Path] = []
    yield points
    for point in reversed(points):
        subprocess.run(["umount", "-l", str(point)], check=True)


def _every_path(top: Path) -> list[Path]:
    """Every file and directory under ``top`` by every path (bind mounts and symlinked
    directories followed once)."""
    found = []
    for directory, dirs, files in os.walk(top, followlinks=True):
        for name in dirs + files:
            found.append(Path(directory) / name)
    return found


def test_every_placement_by_path_agrees_with_the_walk(tmp_path: Path, mounted: list[Path]) -> None:
    copy = tmp_path / "copy"
    for name in ("a", "sub/b", "sub/deep/c", ".kvol/lock"):
        write(copy, name, name)
    outside = tmp_path / "outside"
    for name in ("x", "dir/z"):
        write(outside, name, name)
    os.link(copy / "sub/b", outside / "second-link-of-b")
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "to-copy").symlink_to(copy / "sub")
    _bind(copy / "sub", tmp_path / "pods" / "view", mounted)  # the copy seen elsewhere
    _bind(outside / "dir", copy / "ext", mounted)  # elsewhere seen in the copy

    copy_path = str(copy)
    dev = os.stat(copy_path).st_dev
    verdicts: dict[str, str] = {}
    for path in _every_path(tmp_path):
        ino = os.lstat(path).st_ino
        inside, unplaced = _Placer(copy_path, dev).place({(str(path), ino)})
        if unplaced:
            verdicts[str(path.relative_to(tmp_path))] = "unplaced"
            continue
        walked = _inodes_in(copy_path, {ino})
        if ino in walked:
            assert ino in inside, path
        elif ino in inside:
            # readdir gives a mount point's covered directory, so the walk never meets
            # the root of a mount below the copy; the path does, and counts it in.
            assert ino == os.stat(copy / "ext").st_ino, path
        verdicts[str(path.relative_to(tmp_path))] = "inside" if inside else "outside"

    assert verdicts["copy/a"] == verdicts["copy/sub/deep/c"] == "inside"
    assert verdicts["copy"] == "inside"
    assert verdicts["pods/view/deep/c"] == verdicts["pods/view"] == "inside"
    assert verdicts["copy/ext/z"] == verdicts["outside/dir/z"] == "inside"
    assert verdicts["outside/x"] == verdicts["outside"] == "outside"
    assert verdicts["copy/.kvol/lock"] == verdicts["copy/.kvol"] == "outside"
    # Two links: the other may be anywhere. A symlink on the way: the text proves nothing.
    assert verdicts["outside/second-link-of-b"] == verdicts["copy/sub/b"] == "unplaced"
    assert verdicts["links/to-copy/deep/c"] == "unplaced"


def test_a_copy_file_held_by_a_second_link_outside_blocks_reload(
    copies: tuple[WorkingCopy, WorkingCopy], tmp_path: Path
) -> None:
    _, reader = copies
    link = tmp_path / "second-link"
    os.link(reader.root / "sub" / "b.txt", link)
    _refused_until_stopped(reader, start([sys.executable, "-c", HOLD_OPEN, str(link), "r"]))


def _refused_until_stopped(reader: WorkingCopy, child: subprocess.Popen[str]) -> None:
    """Once ``child`` holds its file, ``reader``'s reload is refused; once it is gone,
    the reload goes through."""
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        reload_refused_for(reader, child)
    finally:
        stop(child)
    assert reader.reload().to_seq == 2


def _hold_in_own_namespace(source: Path, view: Path, name: str) -> subprocess.Popen[str]:
    """A process in a mount namespace of its own, where ``view`` is a bind mount of
    ``source``, holding ``view/name`` open."""
    script = f'mount --bind "$1" "$2" && exec {sys.executable} -c "$3" "$2/$4" r'
    unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    return start([*unshare, str(source), str(view), HOLD_OPEN, name])


def test_a_holder_in_another_mount_namespace_blocks_reload(
    copies: tuple[WorkingCopy, WorkingCopy], tmp_path: Path
) -> None:
    """The holder's path is not one of this namespace (the kernel gives it from the
    bind mount's root): the walk finds the file."""
    _, reader = copies
    view = tmp_path / "view"
    view.mkdir()
    _refused_until_stopped(reader, _hold_in_own_namespace(reader.root / "sub", view, "b.txt"))


def test_a_copy_file_deleted_while_held_does_not_block_reload(
    copies: tuple[WorkingCopy, WorkingCopy],
) -> None:
    _, reader = copies
    doomed = write(reader.root, "scratch.tmp", "temporary")
    child = start([sys.executable, "-c", HOLD_OPEN, str(doomed), "r"])
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        doomed.unlink()
        assert reader.reload().to_seq == 2
    finally:
        stop(child)


def test_a_path_placing_one_file_leaves_another_file_held_by_that_text_to_the_walk(
    tmp_path: Path,
) -> None:
    """Processes in other mount namespaces may hold other files by the same text."""
    copy, outside = tmp_path / "copy", tmp_path / "outside"
    in_copy = write(copy, "f", "of the copy")
    here = write(outside, "f", "elsewhere")
    dev = os.stat(copy).st_dev
    ino_in_copy, ino_here = in_copy.stat().st_ino, here.stat().st_ino
    inside, unplaced = _Placer(str(copy), dev).place(
        {(str(here), ino_here), (str(here), ino_in_copy)}
    )
    assert inside == set() and unplaced == {ino_in_copy}
    assert _inodes_in(str(copy), unplaced) == {ino_in_copy}
