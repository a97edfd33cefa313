"""The resolver gives a publication the Volume's autocommit interval, kept in the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.csi.resolver import StaticResolver
from kvol.errors import CorruptData
from kvol.repo import Repo
from kvol.store import FilesystemStore
from kvol.volume_settings import (
    VolumeSettings,
    read_settings,
    settings_key,
    write_settings,
)


def test_the_volumes_interval_reaches_a_publish_and_the_plugin_default_fills_in(
    tmp_path: Path,
) -> None:
    store = FilesystemStore(tmp_path / "store")
    volume_id = Catalog.for_namespace(store, "ns").create("v").id
    resolver = StaticResolver(f"file://{tmp_path / 'store'}", autocommit_seconds=7)
    assert resolver.resolve("v", "ns").autocommit_seconds == 7  # never written: the default
    assert write_settings(store, volume_id, VolumeSettings(autocommit_seconds=1))
    assert resolver.resolve("v", "ns").autocommit_seconds == 1
    assert write_settings(store, volume_id, VolumeSettings(autocommit_seconds=0))
    assert resolver.resolve("v", "ns").autocommit_seconds == 0  # 0 is off, not "unset"
    assert not write_settings(store, volume_id, VolumeSettings(autocommit_seconds=0))
    # Damaged settings cost the preference, never the pod's volume.
    store.put(settings_key(volume_id), b"{not json")
    assert resolver.resolve("v", "ns").autocommit_seconds == 7
    with pytest.raises(CorruptData):
        read_settings(store, volume_id)
    # Destroying the volume takes its settings along.
    Repo(store, volume_id).destroy()
    assert not store.exists(settings_key(volume_id))


@pytest.mark.parametrize(
    "raw",
    [b"[]", b'{"format": 2}', b'{"format": 1, "autocommitIntervalSeconds": -1}',
     b'{"format": 1, "autocommitIntervalSeconds": true}'],
)  # fmt: skip
def test_malformed_settings_are_refused(raw: bytes) -> None:
    with pytest.raises(CorruptData):
        VolumeSettings.from_json(raw)
