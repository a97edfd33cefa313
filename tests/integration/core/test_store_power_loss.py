"""A filesystem store whose disk loses power keeps everything it said was done: a volume
just created, every commit that returned with all of its content (fsck finds nothing
wrong), and a volume's settings and retention policy as last written. On ext4, btrfs and
xfs (see tests/power_loss.py for how the disk after a power loss is made)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvol
from kvol.catalog import Catalog
from kvol.fsops import SYNC_EACH_LIMIT
from kvol.retention import RetentionPolicy
from kvol.store import FilesystemStore
from kvol.volume_settings import VolumeSettings, read_settings, write_settings
from kvol.workcopy import WorkingCopy
from tests.power_loss import after_power_loss, own_disk
from tests.unit.core.helpers import write


@pytest.fixture(params=["ext4", "btrfs", "xfs"])
def disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, Path]]:
    with own_disk(tmp_path, request.param) as found:
        yield found


def volume_files(store: FilesystemStore, name: str) -> dict[str, bytes]:
    vol = kvol.Volume.from_name(name, store=store)
    return {
        e.path: b"".join(vol.read_file(e.path))
        for e in vol.iterdir("/", recursive=True)
        if e.type == kvol.FileEntryType.FILE
    }


def test_a_volume_just_created_is_there_after_a_power_loss(
    disk: tuple[Path, Path], tmp_path: Path
) -> None:
    # Its name, its metadata and the directories made for them, on a store never used.
    image, disk_root = disk
    volume_id = Catalog(FilesystemStore(disk_root / "store")).create("vol").id

    with after_power_loss(image, tmp_path) as crashed:
        repo = Catalog(FilesystemStore(crashed / "store")).repo("vol")
        assert (repo.volume_id, repo.head()) == (volume_id, 0)


@pytest.mark.parametrize("count", [1, SYNC_EACH_LIMIT + 10])
def test_every_commit_that_returned_is_whole_after_a_power_loss(
    disk: tuple[Path, Path], tmp_path: Path, count: int
) -> None:
    # The copy is on another disk: only the store's own syncs keep its objects. Content
    # of a few KiB (its own objects) and of a few bytes (packed together).
    image, disk_root = disk
    store = FilesystemStore(disk_root / "store")
    Catalog(store).create("vol")
    os.sync()  # the volume is on the disk before the commits (tested above)
    copy = WorkingCopy.create(Catalog(store).repo("vol"), tmp_path / "copy")
    want: dict[str, bytes] = {}
    for round_ in range(2):
        for n in range(count):
            text = f"round {round_} file {n} " * (500 if n % 2 else 1)
            write(copy.root, f"d{n % 3}/f{round_}-{n}", text)
            want[f"d{n % 3}/f{round_}-{n}"] = text.encode()
        copy.commit()
    copy.close(final_commit=False)

    with after_power_loss(image, tmp_path) as crashed:
        after = FilesystemStore(crashed / "store")
        report = kvol.Volume.from_name("vol", store=after).fsck()
        assert report.ok, report.damage
        assert report.head == 2
        assert volume_files(after, "vol") == want


def test_settings_and_retention_as_last_written_are_there_after_a_power_loss(
    disk: tuple[Path, Path], tmp_path: Path
) -> None:
    image, disk_root = disk
    store = FilesystemStore(disk_root / "store")
    vol = kvol.Volume.from_name("vol", store=store, create_if_missing=True)
    volume_id = vol.object_id
    vol.set_retention(keep_last=3)
    write_settings(store, volume_id, VolumeSettings(autocommit_seconds=7))
    os.sync()  # the first ones are on the disk: a change of them is what may be lost
    vol.set_retention(keep_last=50, keep_for=3600)
    write_settings(store, volume_id, VolumeSettings(autocommit_seconds=0))

    with after_power_loss(image, tmp_path) as crashed:
        after = kvol.Volume.from_name("vol", store=FilesystemStore(crashed / "store"))
        assert after.retention_policy() == RetentionPolicy(keep_last=50, keep_for_seconds=3600)
        assert read_settings(after.store, volume_id) == VolumeSettings(autocommit_seconds=0)
