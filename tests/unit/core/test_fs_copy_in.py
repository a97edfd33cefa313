"""The filesystem store's in-kernel copy of file ranges, used for large content."""

from __future__ import annotations

import os
import time
from pathlib import Path

from blake3 import blake3

from kvol.store import FilesystemStore


def key_of(data: object) -> str:
    return "blobs/" + blake3(data).hexdigest()  # type: ignore[arg-type]


def test_copies_ranges_names_them_by_the_stored_bytes(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    payload = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "src"
    src.write_bytes(payload)
    fd = os.open(src, os.O_RDONLY)
    try:
        got = []
        offset = 0
        while (res := store.copy_in(fd, offset, 1 << 20, key_of, 0.0)) is not None:
            key, copied, created = res
            assert created
            assert store.get(key) == payload[offset : offset + copied]
            assert key == key_of(payload[offset : offset + copied])
            got.append(copied)
            offset += copied
        assert got == [1 << 20] * 3 + [17]
        # Present and fresh: kept, not written again.
        assert store.copy_in(fd, 0, 1 << 20, key_of, time.time() - 60) == (
            key_of(payload[: 1 << 20]),
            1 << 20,
            False,
        )
        # Present but older than the freshness bound: written again (renewed).
        key, _, created = store.copy_in(fd, 0, 1 << 20, key_of, time.time() + 60) or ("", 0, 0)
        assert created and store.get(key) == payload[: 1 << 20]
    finally:
        os.close(fd)
    # Staged until a sync names them (one temporary per key: the rewrite replaced one).
    keys = [key_of(payload[at : at + (1 << 20)]) for at in range(0, len(payload), 1 << 20)]
    assert len(os.listdir(tmp_path / "store" / ".tmp")) == len(keys)
    store.sync(keys)
    assert os.listdir(tmp_path / "store" / ".tmp") == []
    assert b"".join((store.root / key).read_bytes() for key in keys) == payload
