"""Uploads without a working copy (SDK ``batch_upload``, CLI ``put``): small files read in
batches and packed, file objects streamed, memory bounded, and still one commit or nothing."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from kvol import InvalidArgument, Volume, content, errors
from kvol.content import PACK_THRESHOLD, hash_file
from kvol.store import FilesystemStore

CHUNK = 64 * 1024
#: Packs a writer may be sending at once (kvol.content.PACKS_IN_FLIGHT).
PACKS_BOUND = 2
#: Chunks of large files a writer may hold at once (kvol.content.CHUNKS_IN_FLIGHT).
CHUNKS_BOUND = 4


class _Trickle(io.RawIOBase):
    """A file object that hands out at most ``step`` bytes a read, and notes each request."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = data
        self._at = 0
        self._step = step
        self.asked: list[int | None] = []

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        self.asked.append(size)
        if size is None or size < 0:
            size = len(self._data)
        size = min(size, self._step)
        out = self._data[self._at : self._at + size]
        self._at += len(out)
        return out


class _PackWatch(FilesystemStore):
    """A real store whose writes of one kind of content (``packs`` or ``blobs``) are slow,
    counting how many run at once; with ``fail_at``, the write of that number fails."""

    def __init__(self, root: Path, fail_at: int | None = None, kind: str = "packs") -> None:
        super().__init__(root, durable=False)
        self._kind = f"/{kind}/"
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.packs = 0
        self._fail_at = fail_at

    def _put_staged(self, key: str, data: bytes | memoryview) -> None:
        if self._kind not in f"/{key}":
            super()._put_staged(key, data)
            return
        with self._lock:
            self.packs += 1
            number = self.packs
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(0.02)
            if number == self._fail_at:
                raise errors.StoreUnavailable("the store went away mid-upload")
            super()._put_staged(key, data)
        finally:
            with self._lock:
                self.running -= 1


def _tree(root: Path, count: int, size: int) -> dict[str, bytes]:
    files = {}
    for i in range(count):
        rel = f"d{i % 3}/f{i:04d}"
        data = os.urandom(size)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        files[rel] = data
    return files


def _published(vol: Volume) -> dict[str, bytes]:
    state = vol.repo.state()
    reader = vol.repo.reader()
    return {path: reader.read(record) for path, record in state.files.items()}


def test_a_file_object_streams_in_chunks_and_lands_byte_identical(tmp_path: Path) -> None:
    data = os.urandom(5 * CHUNK + 12_345)
    source = _Trickle(data, step=10_000)  # short reads: a chunk takes several
    with Volume.ephemeral(store=f"file://{tmp_path / 'store'}", chunk_size=CHUNK) as vol:
        with vol.batch_upload() as batch:
            batch.put_file(cast(BinaryIO, source), "/streamed.bin")
        # Never asked for everything at once: for a chunk at most (or what decides
        # whether the content is small enough to pack).
        bound = max(CHUNK, PACK_THRESHOLD + 1)
        assert all(size is not None and 0 <= size <= bound for size in source.asked)
        record = vol.repo.state().files["streamed.bin"]
        assert [(p.kind, p.length) for p in record.parts] == [("b", CHUNK)] * 5 + [("b", 12_345)]
        assert b"".join(vol.read_file("/streamed.bin")) == data
        assert record.mode == 0o644
        # The same content id a commit of these bytes from a local file computes.
        local = tmp_path / "same.bin"
        local.write_bytes(data)
        with open(local, "rb") as f:
            assert record.hash == hash_file(f.fileno(), len(data), CHUNK)


def test_a_file_object_giving_short_reads_lands_whole_and_packed(tmp_path: Path) -> None:
    with Volume.ephemeral(store=f"file://{tmp_path / 'store'}", chunk_size=CHUNK) as vol:
        with vol.batch_upload() as batch:
            batch.put_file(cast(BinaryIO, _Trickle(b"x" * 1000, step=7)), "/a")
            batch.put_file(io.BytesIO(b"y" * PACK_THRESHOLD), "/b")
        files = vol.repo.state().files
        assert {p.kind for r in files.values() for p in r.parts} == {"p"}
        assert _published(vol) == {"a": b"x" * 1000, "b": b"y" * PACK_THRESHOLD}


def test_a_text_file_object_is_refused(tmp_path: Path) -> None:
    with Volume.ephemeral(store=f"file://{tmp_path / 'store'}") as vol:
        with pytest.raises(InvalidArgument, match="binary"), vol.batch_upload() as batch:
            batch.put_file(io.StringIO("text"), "/t")  # type: ignore[arg-type]
        assert vol.repo.state().files == {}


def test_put_of_a_tree_keeps_content_modes_and_times(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = _tree(src, 600, 700)
    big = os.urandom(PACK_THRESHOLD + 3 * CHUNK)
    (src / "d1" / "big.bin").write_bytes(big)
    (src / "d1" / "big.bin").chmod(0o600)
    (src / "d2" / "f0002").chmod(0o755)
    files["d1/big.bin"] = big
    with Volume.ephemeral(store=f"file://{tmp_path / 'store'}", chunk_size=CHUNK) as vol:
        with vol.batch_upload() as batch:
            batch.put_directory(src, "/up")
        assert batch.seq == 1
        assert _published(vol) == {f"up/{rel}": data for rel, data in files.items()}
        state = vol.repo.state()
        for rel in ("d1/big.bin", "d2/f0002", "d0/f0000"):
            st = os.stat(src / rel)
            record = state.files[f"up/{rel}"]
            assert (record.mode, record.mtime_ns) == (st.st_mode & 0o7777, st.st_mtime_ns)
        assert len(state.files["up/d1/big.bin"].parts) == 7  # chunked, not packed


def test_packs_being_sent_at_once_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small packs and a slow store: a reader that outruns the store must wait for it
    # rather than queue every pack in memory.
    monkeypatch.setattr(content, "PACK_TARGET", 8 * 1024)
    src = tmp_path / "src"
    files = _tree(src, 300, 1024)
    store = _PackWatch(tmp_path / "store")
    vol = Volume.create("data", store=store)
    with vol.batch_upload() as batch:
        batch.put_directory(src, "/")
    assert store.packs >= 30
    assert store.peak <= PACKS_BOUND
    assert content.PACKS_IN_FLIGHT == PACKS_BOUND
    assert _published(vol) == files


def test_chunks_held_at_once_are_bounded_across_files(tmp_path: Path) -> None:
    # Six large files: one worker each would hold six chunks and more; the writer holds
    # at most its bound, however many files are being read.
    src = tmp_path / "src"
    files = {f"big{i}": os.urandom(PACK_THRESHOLD + 4 * CHUNK) for i in range(6)}
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    store = _PackWatch(tmp_path / "store", kind="blobs")
    with Volume.ephemeral(store=store, chunk_size=CHUNK) as vol:
        with vol.batch_upload() as batch:
            batch.put_directory(src, "/")
        assert store.packs == 6 * 8
        assert store.peak <= CHUNKS_BOUND
        assert content.CHUNKS_IN_FLIGHT == CHUNKS_BOUND
        assert _published(vol) == files


def test_one_large_file_is_sent_several_chunks_at_a_time(tmp_path: Path) -> None:
    data = os.urandom(PACK_THRESHOLD + 8 * CHUNK)
    (tmp_path / "big").write_bytes(data)
    store = _PackWatch(tmp_path / "store", kind="blobs")
    with Volume.ephemeral(store=store, chunk_size=CHUNK) as vol:
        with vol.batch_upload() as batch:
            batch.put_file(tmp_path / "big", "/big")
        assert store.peak >= 2
        assert b"".join(vol.read_file("/big")) == data


def test_a_put_that_fails_midway_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(content, "PACK_TARGET", 8 * 1024)
    src = tmp_path / "src"
    _tree(src, 200, 1024)
    store = _PackWatch(tmp_path / "store", fail_at=5)
    vol = Volume.create("data", store=store)
    with pytest.raises(errors.StoreUnavailable), vol.batch_upload() as batch:
        batch.put_directory(src, "/")
    assert vol.info().head == 0
    assert list(vol.repo.entries_after(0)) == []
    assert vol.listdir("/", recursive=True) == []


def test_a_put_fails_whole_when_a_file_goes_before_it_is_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src, 40, 100)
    with Volume.ephemeral(store=f"file://{tmp_path / 'store'}") as vol:
        with pytest.raises(FileNotFoundError), vol.batch_upload() as batch:
            batch.put_directory(src, "/")
            (src / "d1" / "f0013").unlink()
        assert vol.info().head == 0
        assert vol.listdir("/", recursive=True) == []


def test_a_put_refuses_a_directory_swapped_for_a_link_out_of_the_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src, 30, 100)
    outside = tmp_path / "outside"
    outside.mkdir()
    for i in range(30):
        (outside / f"f{i:04d}").write_bytes(b"secret")
    with Volume.ephemeral(store=f"file://{tmp_path / 'store'}") as vol:
        with pytest.raises(InvalidArgument, match="leads out of"), vol.batch_upload() as batch:
            batch.put_directory(src, "/")
            (src / "d2").rename(tmp_path / "moved")
            (src / "d2").symlink_to(outside)
        assert vol.listdir("/", recursive=True) == []
