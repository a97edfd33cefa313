"""A store error translated for a caller must not tie the caller's frames into a reference
cycle: an upload whose chunks are checked with ``head`` (NotFound for new content) would
otherwise keep every chunk alive until the cyclic collector runs, growing with the file."""

from __future__ import annotations

import gc
import os
import tracemalloc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.content import ContentWriter
from kvol.errors import NotFound
from kvol.repo import Repo
from kvol.store import FilesystemStore


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Witness:
    """Something a caller's frame holds, like an upload's chunk."""


def _miss(store: FilesystemStore) -> weakref.ref[_Witness]:
    witness = _Witness()
    with pytest.raises(NotFound):
        store.head("missing/object")
    return weakref.ref(witness)


def test_a_translated_error_leaves_no_cycle(tmp_path: Path, no_gc: None) -> None:
    # What this caller's frame held is gone with it, with the collector off: a cycle
    # through the error would keep the frame. (Asked of this frame alone, not of
    # gc.collect(), which counts the garbage of every thread other tests left running.)
    store = FilesystemStore(tmp_path)
    assert all(_miss(store)() is None for _ in range(3))


def test_upload_memory_does_not_grow_with_the_file(tmp_path: Path, no_gc: None) -> None:
    chunk = 1 << 20
    path = tmp_path / "big"
    path.write_bytes(os.urandom(32 * chunk))
    store = FilesystemStore(tmp_path / "store")
    repo = Repo.create(store, chunk_size=chunk)
    tracemalloc.start()
    try:
        with ContentWriter(store, repo.keys, chunk, concurrency=1) as writer:
            # The writer closes the file it is handed.
            future = writer.add(lambda: (open(path, "rb", buffering=0), os.stat(path)))  # noqa: SIM115
            writer.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert future.result().size == 32 * chunk
    assert peak < 8 * chunk, f"peak {peak / chunk:.1f} chunks for a 32-chunk file"
