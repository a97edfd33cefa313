"""Change tracking of plain working copies held open (kvol.tracker): a scan from inotify
events finds exactly what a scan of every file finds, and falls back to one whenever the
events may not tell everything."""

from __future__ import annotations

import mmap
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvol import tracker as tracker_module
from kvol.catalog import Catalog
from kvol.model import PutOp
from kvol.repo import Repo
from kvol.tracker import ChangeTracker
from kvol.workcopy import ScanResult, WorkingCopy


@pytest.fixture
def tracked(wc: WorkingCopy) -> Iterator[WorkingCopy]:
    (wc.root / "d" / "e").mkdir(parents=True)
    for rel in ("top", "d/x", "d/y", "d/e/z"):
        _write(wc.root / rel, rel)
    wc.commit()
    assert wc.track_changes()
    wc.commit()  # the first scan is a full one
    yield wc
    wc.stop_tracking()


def tracker_of(wc: WorkingCopy) -> ChangeTracker:
    tracker = wc._tracker
    assert tracker is not None
    return tracker


def summary(scan: ScanResult) -> dict[str, Any]:
    return {
        "candidates": dict(scan.candidates),
        "deleted": set(scan.deleted),
        "dirs_added": set(scan.dirs_added),
        "dirs_removed": set(scan.dirs_removed),
        "skipped": set(scan.skipped),
    }


def scan_both(wc: WorkingCopy, *, tracked_only: bool = True) -> dict[str, Any]:
    """The tracker's scan, checked against a scan of every file made right after it."""
    tracker = tracker_of(wc)
    before = tracker.tracked_scans
    found = summary(wc._scan())
    if tracked_only:
        assert tracker.tracked_scans == before + 1, tracker.last_full_reason
    assert found == summary(wc._scan_everything())
    return found


def test_tracker_sees_every_kind_of_change(tracked: WorkingCopy, tmp_path: Path) -> None:
    root = tracked.root
    outside = tmp_path / "outside"
    outside.mkdir()
    _write(outside / "incoming", "from outside")
    steps: list[tuple[str, Callable[[], object]]] = [
        ("create", lambda: _write(root / "new", "new")),
        ("create in a subdirectory", lambda: _write(root / "d/e/new", "n")),
        ("append", lambda: _write(root / "d/x", "more", "a")),
        ("truncate", lambda: _truncate(root / "d/y")),
        ("chmod", lambda: os.chmod(root / "top", 0o600)),
        ("touch", lambda: os.utime(root / "d/e/z", ns=(1, _AN_HOUR_AGO + 1))),
        ("rename inside", lambda: os.rename(root / "d/x", root / "d/e/x2")),
        ("rename out", lambda: os.rename(root / "d/y", outside / "y")),
        ("rename in", lambda: os.rename(outside / "incoming", root / "d/incoming")),
        ("delete", lambda: os.unlink(root / "new")),
        ("new subdirectories", lambda: _make(root / "n1/n2/n3/f", root / "n1/g")),
        ("new empty directory", lambda: (root / "empty").mkdir()),
        ("remove a tree", lambda: shutil.rmtree(root / "n1")),
        ("file replaced by a directory", lambda: _file_to_dir(root / "top")),
        ("directory replaced by a file", lambda: _dir_to_file(root / "top")),
        ("symlink", lambda: os.symlink("/etc/passwd", root / "d/link")),
        ("fifo", lambda: os.mkfifo(root / "d/fifo")),
        ("special files removed", lambda: _unlink(root / "d/link", root / "d/fifo")),
        ("temporary name", lambda: _write(root / "d/.kvol-tmp-x", "t")),
        ("temporary name renamed into place", lambda: _rename_temp(root / "d")),
    ]
    for what, edit in steps:
        edit()
        found = scan_both(tracked)
        # (Removed special files and temporary names are nothing to commit.)
        assert any(found.values()) or what in ("special files removed", "temporary name"), what
        tracked.commit()
        # What the commit settled is not reported again (special files are, each time).
        settled = scan_both(tracked)
        settled.pop("skipped")
        assert not any(settled.values()), what


def test_a_queue_overflow_falls_back_to_a_full_scan(tracked: WorkingCopy) -> None:
    tracker = tracker_of(tracked)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    a, b = tracked.root / "d/x", tracked.root / "d/y"
    # Alternating files: consecutive events differ, so the kernel cannot merge them.
    for i in range(limit // 2 + 10):
        os.utime(a, ns=(i, _AN_HOUR_AGO + i))
        os.utime(b, ns=(i, _AN_HOUR_AGO + i))
    (tracked.root / "d/e/during").write_text("made while the queue was full")
    full_scans = tracker.full_scans
    found = scan_both(tracked, tracked_only=False)
    assert tracker.full_scans == full_scans + 1
    assert tracker.last_full_reason == "the event queue overflowed"
    assert {"d/x", "d/y", "d/e/during"} <= set(found["candidates"])
    tracked.commit()
    (tracked.root / "d/e/after").write_text("tracked again")
    assert "d/e/after" in scan_both(tracked)["candidates"]


def test_no_change_is_missed_while_the_watches_are_set_up(wc: WorkingCopy) -> None:
    root = wc.root
    (root / "d").mkdir()
    (root / "d/x").write_text("x")
    wc.commit()
    tracker = ChangeTracker(root)
    try:

        def racing_full_scan() -> ScanResult:
            # The watches are in place: a change now is seen by the scan ...
            (root / "before").write_text("before the scan")
            result = wc._scan_everything()
            # ... and one after it has read the tree raises an event for the next scan.
            (root / "after").write_text("after the scan")
            (root / "d/x").write_text("changed after the scan")
            (root / "late/deep").mkdir(parents=True)
            (root / "late/deep/f").write_text("f")
            return result

        first = tracker.scan(wc.index, racing_full_scan)
        assert tracker.full_scans == 1 and "before" in first.candidates
        second = tracker.scan(wc.index, wc._scan_everything)
        assert tracker.tracked_scans == 1
        assert {"before", "after", "d/x", "late/deep/f"} <= set(second.candidates)
        assert {"late", "late/deep"} <= second.dirs_added
        assert summary(second) == summary(wc._scan_everything())
    finally:
        tracker.close()


def test_tracked_commits_publish_what_full_scans_publish(catalog: Catalog, tmp_path: Path) -> None:
    """The same edits in two copies of two volumes, one tracked, one scanning every
    file: every commit publishes the same operations."""
    catalog.create("tracked")
    catalog.create("scanned")
    copies = [
        WorkingCopy.create(catalog.repo(name), tmp_path / name) for name in ("tracked", "scanned")
    ]
    try:
        assert copies[0].track_changes()
        rng = random.Random(16)
        for step in range(40):
            edit = _random_edit(rng, step)
            published = []
            for copy in copies:
                edit(copy.root)
                result = copy.commit()
                published.append(_ops(copy.repo, result.seq))
            assert published[0] == published[1], step
        assert tracker_of(copies[0]).tracked_scans >= 30
    finally:
        for copy in copies:
            copy.close(final_commit=False)


def test_writes_through_another_link_are_seen(tracked: WorkingCopy, tmp_path: Path) -> None:
    root = tracked.root
    os.link(root / "d/x", root / "d/x-link")  # a second name inside the copy
    os.link(root / "d/y", tmp_path / "y-outside")  # and one outside
    scan_both(tracked, tracked_only=False)
    assert tracker_of(tracked).last_full_reason == "a file with several links"
    tracked.commit()
    assert scan_both(tracked) == summary(ScanResult())  # settled: nothing carried over
    _write(root / "d/x-link", "written through the other name")
    _write(tmp_path / "y-outside", "written from outside the copy")
    found = scan_both(tracked)
    assert {"d/x", "d/x-link", "d/y"} <= set(found["candidates"])


def test_renamed_directories_and_reloads_fall_back_to_full_scans(
    tracked: WorkingCopy, make_wc: Callable[[str], WorkingCopy]
) -> None:
    tracker = tracker_of(tracked)
    os.rename(tracked.root / "d/e", tracked.root / "moved")
    found = scan_both(tracked, tracked_only=False)
    assert tracker.last_full_reason == "a directory was renamed"
    assert "moved/z" in found["candidates"] and "d/e/z" in found["deleted"]
    tracked.commit()
    (tracked.root / "moved/new").write_text("tracked at its new path")
    assert "moved/new" in scan_both(tracked)["candidates"]
    tracked.commit()

    other = make_wc("other")
    (other.root / "from-other").write_text("other")
    other.commit()
    tracked.reload()
    scan_both(tracked, tracked_only=False)
    assert tracker.last_full_reason == "the index changed outside a commit"
    assert tracked.commit().seq is None  # nothing of the reload is sent back


def test_the_safety_net_scans_everything_periodically(tracked: WorkingCopy) -> None:
    tracker = tracker_of(tracked)
    tracked.track_changes(full_scan_seconds=0.05)
    time.sleep(0.06)
    full_scans = tracker.full_scans
    tracked.commit()
    assert tracker.full_scans == full_scans + 1
    assert tracker.last_full_reason == "periodic full scan"


def test_stopping_autocommit_leaves_the_final_commit_a_full_scan(
    repo: Repo, tmp_path: Path
) -> None:
    wc = WorkingCopy.create(repo, tmp_path / "wc")
    wc.start_autocommit(3600)
    assert wc._tracker is not None
    (wc.root / "f").write_text("f")
    result = wc.close()
    assert wc._tracker is None
    assert result is not None and result.files == 1


def test_a_write_through_a_memory_map_reaches_the_final_commit(repo: Repo, tmp_path: Path) -> None:
    # inotify never hears of a write through a shared mapping: tracked commits miss it
    # until the safety net, so the final commit must scan every file (a pod's unpublish
    # stops autocommit, then commits, then removes the copy).
    wc = WorkingCopy.create(repo, tmp_path / "wc")
    path = wc.root / "f"
    path.write_bytes(b"a" * 4096)
    long_ago = time.time() - 3600
    os.utime(path, (long_ago, long_ago))  # not racy: only its stat says it is clean
    wc.start_autocommit(3600)
    assert wc.commit().files == 1  # tracking's first scan is a full one
    with open(path, "r+b") as handle:
        mapped = mmap.mmap(handle.fileno(), 0)
    assert wc.commit().seq is None  # the close raised an event; nothing changed yet
    mapped[:5] = b"hello"
    mapped.flush()
    try:
        # No event until the mapping's own descriptor closes: no change found.
        assert wc.commit().seq is None

        wc.stop_autocommit()
        result = wc.commit()
    finally:
        mapped.close()

    assert result.files == 1
    record = repo.state().files["f"]
    assert repo.reader().read(record) == b"hello" + b"a" * 4091
    wc.close(final_commit=False)


def test_a_copy_that_cannot_be_watched_is_scanned_whole(tracked: WorkingCopy) -> None:
    tracker = tracker_of(tracked)
    inotify = tracker._inotify
    assert inotify is not None
    inotify.max_watches = 2  # as if the watch limit were reached at the third directory
    tracker.request_full_scan("test")
    _write(tracked.root / "d/e/new", "new")
    assert "d/e/new" in tracked.status().changed
    assert not tracker.active
    _write(tracked.root / "d/later", "later")  # no events now: found by a full scan
    assert tracked.commit().files == 2


def test_tracked_copies_per_process_are_bounded(repo: Repo, tmp_path: Path) -> None:
    """inotify instances are a per-user budget the kubelet shares: beyond the bound, a copy
    is scanned whole instead."""
    trackers = []
    try:
        for _ in range(tracker_module.MAX_TRACKED_COPIES):
            try:
                trackers.append(ChangeTracker(tmp_path))
            except tracker_module.TrackingUnavailable:
                break  # others in this process hold some already
        wc = WorkingCopy.create(repo, tmp_path / "wc")
        assert wc.track_changes() is False
        (wc.root / "f").write_text("f")
        assert wc.commit().files == 1
        wc.close(final_commit=False)
    finally:
        for t in trackers:
            t.close()
    assert ChangeTracker(tmp_path).active


# -- helpers ----------------------------------------------------------------------------


#: Files are dated this far back, so that no commit takes them for racy ones (a racy file
#: is looked at by every scan until it settles, which would hide a missed event).
_AN_HOUR_AGO = time.time_ns() - 3600 * 10**9


def _write(path: Path, text: str, mode: str = "w") -> None:
    with path.open(mode) as f:
        f.write(text)
    os.utime(path, ns=(_AN_HOUR_AGO, _AN_HOUR_AGO))


def _truncate(path: Path) -> None:
    os.truncate(path, 0)
    os.utime(path, ns=(_AN_HOUR_AGO, _AN_HOUR_AGO))


def _make(*files: Path) -> None:
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        _write(f, f.name)


def _file_to_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()
    _write(path / "inside", "inside")


def _dir_to_file(path: Path) -> None:
    shutil.rmtree(path)
    _write(path, "a file again")


def _unlink(*found: Path) -> None:
    for p in found:
        p.unlink()


def _rename_temp(directory: Path) -> None:
    os.rename(directory / ".kvol-tmp-x", directory / "from-temp")


def _random_edit(rng: random.Random, step: int) -> Callable[[Path], None]:
    kind = rng.choice(["write", "write", "append", "delete", "mkdir", "rmtree", "rename", "chmod"])
    name = f"a{rng.randrange(3)}/b{rng.randrange(2)}/f{rng.randrange(4)}"
    target = f"a{rng.randrange(3)}/f{rng.randrange(4)}"

    def edit(root: Path) -> None:
        path = root / name
        if kind in ("write", "append") or not path.parent.exists():
            _make(path)
            mode = "a" if kind == "append" else "w"
            with path.open(mode) as f:
                f.write(f"step {step}\n")
        elif kind == "delete" and path.exists():
            path.unlink()
        elif kind == "mkdir":
            (path.parent / f"dir{step}").mkdir()
        elif kind == "rmtree":
            shutil.rmtree(path.parent)
        elif kind == "rename" and path.exists() and (root / target).parent.exists():
            if (root / target).is_dir():
                shutil.rmtree(root / target)
            os.rename(path, root / target)
        elif kind == "chmod" and path.exists():
            os.chmod(path, 0o600 if step % 2 else 0o644)

    return edit


def _ops(repo: Repo, seq: int | None) -> list[tuple[Any, ...]]:
    if seq is None:
        return []
    entry = repo.read_entry(seq)
    assert entry is not None
    out: list[tuple[Any, ...]] = []
    for op in entry.ops:
        if isinstance(op, PutOp):
            out.append(("put", op.path, op.record.hash, op.record.size, op.record.mode))
        else:
            out.append((type(op).__name__, op.path))
    return sorted(out)
