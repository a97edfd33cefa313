"""A power loss right after an overlay copy's commit leaves its upper layer as the commit
recorded it: the changed file's new bytes, the whiteout of the deleted one and the new
file, each under directories the overlay copied up for them (see tests/power_loss.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kvol.fsops import SYNC_EACH_LIMIT
from kvol.overlay import UPPER, ContentCache, Lowers, OverlayWorkingCopy
from kvol.repo import Repo
from tests.integration.overlay.seeding import seed
from tests.power_loss import after_power_loss, commit_names, own_disk

OLD, NEW = b"old bytes " * 400, b"new bytes " * 400


@pytest.mark.parametrize("fstype", ["ext4", "btrfs", "xfs"])
def test_an_overlay_copys_commit_is_in_its_upper_layer_after_a_power_loss(
    repo: Repo, tmp_path: Path, fstype: str
) -> None:
    seq = seed(repo, tmp_path, {"a/b/changed": OLD, "a/b/deleted": OLD, "c/kept": OLD})
    with own_disk(tmp_path, fstype) as (image, disk):
        lowers = Lowers(disk / "lowers", ContentCache(disk / "cache"))
        wc = OverlayWorkingCopy.mount(repo, lowers, lowers.build(repo, seq), disk / "pod")
        try:
            os.sync()  # the snapshot and the empty layers are on the disk before the change
            (wc.root / "a/b/changed").write_bytes(NEW)
            (wc.root / "a/b/deleted").unlink()
            (wc.root / "n/e/w").mkdir(parents=True)
            (wc.root / "n/e/w/file").write_bytes(NEW)
            result = wc.commit()
            assert (result.files, result.deleted) == (2, 1)

            with after_power_loss(image, tmp_path) as crashed:
                upper = crashed / "pod" / UPPER
                assert (upper / "a/b/changed").read_bytes() == NEW
                whiteout = os.lstat(upper / "a/b/deleted")
                assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
                assert (upper / "n/e/w/file").read_bytes() == NEW
        finally:
            wc.close(final_commit=False)
            wc.unmount()


@pytest.mark.parametrize("fstype", ["ext4", "btrfs", "xfs"])
@pytest.mark.parametrize("count", [20, SYNC_EACH_LIMIT + 10])
def test_the_content_caches_entries_are_whole_after_a_power_loss(
    repo: Repo, tmp_path: Path, fstype: str, count: int
) -> None:
    files = {f"d{n % 3}/f{n}": (f"content {n} " * 500).encode() for n in range(count)}
    seq = seed(repo, tmp_path, files)
    with own_disk(tmp_path, fstype) as (image, disk):
        cache = ContentCache(disk / "cache")
        assert cache.fill(repo, repo.state(seq).files) == count
        # Names reach the disk within seconds, data may take much longer: a directory's
        # fsync takes them there now (on btrfs, those of that directory only).
        for directory in [cache.root, *(p for p in cache.root.iterdir() if p.is_dir())]:
            commit_names(directory)
        with after_power_loss(image, tmp_path) as crashed:
            entries = [p for p in (crashed / "cache").rglob("*") if p.is_file()]
            assert len(entries) == count
            for entry in entries:
                assert entry.read_bytes() in files.values(), f"{entry.name} is damaged"
