"""The copy-on-write working copy on real overlay mounts (root only)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvol.index import Index, delta_path
from kvol.mounting import is_mountpoint
from kvol.overlay import ContentCache, Lowers, OverlayWorkingCopy
from kvol.repo import Repo
from tests.integration.overlay.seeding import seed
from tests.power_loss import after_power_loss, commit_names, own_disk

pytestmark = pytest.mark.root


def state_files(repo: Repo) -> dict[str, bytes]:
    state = repo.state()
    reader = repo.reader()
    return {p: reader.read(r) for p, r in state.files.items()}


def test_commit_sees_new_changed_and_deleted_files(
    repo: Repo, lowers: Lowers, tmp_path: Path, mounted: list[OverlayWorkingCopy]
) -> None:
    seq = seed(repo, tmp_path, {"a.txt": b"a", "d/b.txt": b"b", "d/e/c.txt": b"c", "gone": b"x"})
    lower = lowers.build(repo, seq)
    wc = OverlayWorkingCopy.mount(repo, lowers, lower, tmp_path / "pod1")
    mounted.append(wc)
    assert is_mountpoint(wc.root)
    assert (wc.root / "d/e/c.txt").read_bytes() == b"c"
    assert wc.commit().seq is None  # nothing changed: nothing published

    (wc.root / "a.txt").write_bytes(b"A2")
    (wc.root / "new/deep").mkdir(parents=True)
    (wc.root / "new/deep/n.txt").write_bytes(b"n")
    (wc.root / "gone").unlink()
    result = wc.commit()
    assert result.seq == seq + 1
    assert state_files(repo) == {
        "a.txt": b"A2",
        "d/b.txt": b"b",
        "d/e/c.txt": b"c",
        "new/deep/n.txt": b"n",
    }
    assert wc.commit().seq is None


def test_a_new_copys_commit_saves_a_delta_against_the_snapshots_index(
    repo: Repo, lowers: Lowers, tmp_path: Path, mounted: list[OverlayWorkingCopy]
) -> None:
    # The copy's index starts as a byte copy of the snapshot's: a small commit writes
    # only its changes beside it, and the copy opened again sees them.
    seq = seed(repo, tmp_path, {f"f{i}": b"x" * i for i in range(20)})
    lower = lowers.build(repo, seq)
    wc = OverlayWorkingCopy.mount(repo, lowers, lower, tmp_path / "pod1")
    mounted.append(wc)
    index_path = wc.meta_dir / "index"
    copied = index_path.read_bytes()
    assert copied == lower.index_path.read_bytes()
    (wc.root / "f3").write_bytes(b"changed")
    assert wc.commit().seq == seq + 1
    assert index_path.read_bytes() == copied
    assert delta_path(index_path).exists()
    assert Index.load(index_path).files == wc.index.files
    assert Index.load(index_path).base == seq + 1


def test_removed_directory_and_opaque_replacement(
    repo: Repo, lowers: Lowers, tmp_path: Path, mounted: list[OverlayWorkingCopy]
) -> None:
    seq = seed(repo, tmp_path, {"d/x": b"1", "d/y": b"2", "k/z": b"3", "keep": b"k"})
    wc = OverlayWorkingCopy.mount(repo, lowers, lowers.build(repo, seq), tmp_path / "pod")
    mounted.append(wc)
    for name in ("x", "y"):
        (wc.root / "d" / name).unlink()
    (wc.root / "d").rmdir()
    # rm -r k; mkdir k; write a new file: k becomes opaque in the upper layer.
    (wc.root / "k/z").unlink()
    (wc.root / "k").rmdir()
    (wc.root / "k").mkdir()
    (wc.root / "k/w").write_bytes(b"w")
    wc.commit()
    state = repo.state()
    assert set(state.files) == {"keep", "k/w"}
    assert "d" not in state.all_dirs()


def test_upper_only_file_deleted_after_commit(
    repo: Repo, lowers: Lowers, tmp_path: Path, mounted: list[OverlayWorkingCopy]
) -> None:
    seq = seed(repo, tmp_path, {"base": b"b"})
    wc = OverlayWorkingCopy.mount(repo, lowers, lowers.build(repo, seq), tmp_path / "pod")
    mounted.append(wc)
    (wc.root / "tmpdir").mkdir()
    (wc.root / "tmpdir/f").write_bytes(b"f")
    wc.commit()
    assert "tmpdir/f" in repo.state().files
    # Never in the lower layer: deleting it leaves no whiteout behind.
    (wc.root / "tmpdir/f").unlink()
    (wc.root / "tmpdir").rmdir()
    wc.commit()
    state = repo.state()
    assert set(state.files) == {"base"}
    assert "tmpdir" not in state.all_dirs()


def test_two_copies_share_one_lower_and_reload_through_the_view(
    repo: Repo, lowers: Lowers, tmp_path: Path, mounted: list[OverlayWorkingCopy]
) -> None:
    seq = seed(repo, tmp_path, {"shared": b"s0", "other": b"o"})
    lower = lowers.build(repo, seq)
    one = OverlayWorkingCopy.mount(repo, lowers, lower, tmp_path / "pod1")
    two = OverlayWorkingCopy.mount(repo, lowers, lower, tmp_path / "pod2")
    mounted += [one, two]
    assert lowers.build(repo, seq) == lower  # reused, not rebuilt
    (one.root / "from-one").write_bytes(b"1")
    (one.root / "shared").write_bytes(b"s1")
    (one.root / "other").unlink()
    one.commit()
    (two.root / "from-two").write_bytes(b"2")
    result = two.reload()
    assert result.to_seq == seq + 1
    assert (two.root / "from-one").read_bytes() == b"1"
    assert (two.root / "shared").read_bytes() == b"s1"
    assert not (two.root / "other").exists()
    assert (two.root / "from-two").read_bytes() == b"2"  # local change kept
    # The lower snapshot was never written.
    assert (lower.tree / "shared").read_bytes() == b"s0"
    assert (lower.tree / "other").exists()
    # What the reload wrote is recorded as clean: only the local file is committed.
    committed = two.commit()
    assert committed.files == 1
    assert state_files(repo)["from-two"] == b"2"
    assert "other" not in repo.state().files


def test_reload_keeps_a_local_deletion(
    repo: Repo, lowers: Lowers, tmp_path: Path, mounted: list[OverlayWorkingCopy]
) -> None:
    seq = seed(repo, tmp_path, {"f": b"1", "g": b"g"})
    lower = lowers.build(repo, seq)
    one = OverlayWorkingCopy.mount(repo, lowers, lower, tmp_path / "pod1")
    two = OverlayWorkingCopy.mount(repo, lowers, lower, tmp_path / "pod2")
    mounted += [one, two]
    (one.root / "f").write_bytes(b"2")
    one.commit()
    (two.root / "f").unlink()
    two.reload()
    assert not (two.root / "f").exists()  # the local deletion will be the last write
    two.commit()
    assert "f" not in repo.state().files


def test_readopt_after_unmount_keeps_uncommitted_changes(
    repo: Repo, lowers: Lowers, tmp_path: Path, mounted: list[OverlayWorkingCopy]
) -> None:
    seq = seed(repo, tmp_path, {"f": b"1"})
    lower = lowers.build(repo, seq)
    wc = OverlayWorkingCopy.mount(repo, lowers, lower, tmp_path / "pod")
    (wc.root / "pending").write_bytes(b"p")
    wc.close(final_commit=False)
    wc.unmount()  # as after a node reboot: the layers are on disk, the mount is gone
    again = OverlayWorkingCopy.mount(repo, lowers, lower, tmp_path / "pod")
    mounted.append(again)
    assert (again.root / "pending").read_bytes() == b"p"
    again.commit()
    assert state_files(repo)["pending"] == b"p"


def test_snapshot_links_cache_entries_and_cache_survives(
    repo: Repo, lowers: Lowers, tmp_path: Path
) -> None:
    seq = seed(repo, tmp_path, {"a": b"same", "b": b"same", "c": b"other"})
    lower = lowers.build(repo, seq)
    st = os.stat(lower.tree / "c")
    assert st.st_nlink == 2  # the cache entry and the snapshot's link
    lowers.drop(lower)
    assert not lower.path.exists()
    fetched = lowers.cache.fill(repo, list(repo.state(seq).files.values()))
    assert fetched == 0  # the content cache outlives the snapshot


def test_a_snapshot_and_the_cache_entries_it_links_are_whole_after_a_power_loss(
    repo: Repo, tmp_path: Path
) -> None:
    """Cache entries and snapshots are named only once on disk: after a power loss, one
    that exists holds its files whole (a later build would link or serve it as it is)."""
    state_files = {f"d{n % 3}/f{n}": (f"content {n} " * 500).encode() for n in range(20)}
    seq = seed(repo, tmp_path, state_files)
    with own_disk(tmp_path) as (image, disk):
        lowers = Lowers(disk / "lowers", ContentCache(disk / "cache"))
        lower = lowers.build(repo, seq)
        # The journal commits names within seconds (a directory's fsync commits it now);
        # data written without a sync may take much longer to reach the disk.
        commit_names(lower.path.parent)
        with after_power_loss(image, tmp_path) as crashed:
            tree = crashed / lower.tree.relative_to(disk)
            found = {
                str(p.relative_to(tree)): p.read_bytes() for p in tree.rglob("*") if p.is_file()
            }
            assert found == state_files
            entries = [p for p in (crashed / "cache").rglob("*") if p.is_file()]
            assert len(entries) == len(state_files)
            for entry in entries:
                assert entry.read_bytes() in state_files.values(), f"{entry.name} is damaged"
