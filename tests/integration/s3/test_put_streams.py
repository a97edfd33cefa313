"""Uploads without a working copy on a real MinIO: packed small files, chunked large ones
and a streamed file object all land byte-identical in one commit."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from kvol import Volume
from kvol.content import PACK_THRESHOLD
from tests.minio import MinioServer

pytestmark = pytest.mark.s3

CHUNK = 64 * 1024


def test_put_of_small_large_and_streamed_files_lands_byte_identical(
    minio: MinioServer, s3_bucket: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    files: dict[str, bytes] = {}
    for i in range(300):
        rel = f"d{i % 4}/f{i:03d}"
        files[rel] = os.urandom(500 + i)
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(files[rel])
    files["big.bin"] = os.urandom(PACK_THRESHOLD + 2 * CHUNK + 17)
    (src / "big.bin").write_bytes(files["big.bin"])
    streamed = os.urandom(5 * CHUNK + 5)
    store = minio.store(s3_bucket, "kvol/")
    with Volume.ephemeral(store=store, chunk_size=CHUNK) as vol:
        with vol.batch_upload() as batch:
            batch.put_directory(src, "/tree")
            batch.put_file(io.BytesIO(streamed), "/streamed.bin")
        assert batch.seq == 1
        state = vol.repo.state()
        reader = vol.repo.reader()
        got = {path: reader.read(record) for path, record in state.files.items()}
        assert got == {**{f"tree/{k}": v for k, v in files.items()}, "streamed.bin": streamed}
        assert len(state.files["streamed.bin"].parts) == 6
        assert {p.kind for p in state.files["tree/d0/f000"].parts} == {"p"}
