"""kvol.Volume against a real filesystem store in a temporary directory."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import pytest

from kvol import (
    AlreadyExists,
    FileEntryType,
    InvalidArgument,
    InvalidPath,
    LimitExceeded,
    NotFound,
    ReadOnly,
    VersionMismatch,
    Volume,
)
from kvol.model import Limits
from kvol.store import Store, open_store


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


@pytest.fixture
def store(url: str) -> Store:
    return open_store(url)


def objects(store: Store, prefix: str) -> list[str]:
    return [info.key for info in store.list(prefix)]


def content_objects(store: Store, vol: Volume) -> list[str]:
    keys = vol.repo.keys
    return objects(store, keys.blob_prefix) + objects(store, keys.pack_prefix)


def upload(vol: Volume, files: dict[str, bytes], force: bool = False) -> int | None:
    with vol.batch_upload(force=force) as batch:
        for path, data in files.items():
            batch.put_file(io.BytesIO(data), path)
    return batch.seq


# -- handles ------------------------------------------------------------------------------------


def test_from_name_touches_nothing_until_used(tmp_path: Path) -> None:
    root = tmp_path / "never"
    vol = Volume.from_name("data", create_if_missing=True, store=f"file://{root}")
    assert not root.exists()
    assert vol.listdir() == []
    assert root.exists()
    assert Volume.from_name("data", store=f"file://{root}").info().head == 0


def test_missing_volume_fails_at_first_use(url: str) -> None:
    vol = Volume.from_name("missing", store=url)
    with pytest.raises(NotFound, match="missing"):
        vol.listdir()


def test_bad_name_and_version_fail_at_once(url: str) -> None:
    with pytest.raises(InvalidArgument):
        Volume.from_name("no/slashes", store=url)
    with pytest.raises(InvalidArgument):
        Volume.from_name("data", version=3, store=url)


def test_version_mismatch(url: str) -> None:
    Volume.create("old", version=1, store=url)
    with pytest.raises(VersionMismatch):
        Volume.from_name("old", version=2, store=url).hydrate()
    with pytest.raises(VersionMismatch):
        Volume.from_name("old", version=2, create_if_missing=True, store=url).hydrate()
    with pytest.raises(VersionMismatch):
        Volume.create("old", version=2, allow_existing=True, store=url)
    assert Volume.from_name("old", version=1, store=url).info().version == 1


def test_create_list_rename_delete(url: str, store: Store) -> None:
    a = Volume.create("b-vol", store=url)
    Volume.create("a-vol", store=url)
    with pytest.raises(AlreadyExists):
        Volume.create("b-vol", store=url)
    assert Volume.create("b-vol", allow_existing=True, store=url).object_id == a.object_id
    assert [v.name for v in Volume.list(store=url)] == ["a-vol", "b-vol"]

    upload(a, {"f.txt": b"kept across a rename"})
    Volume.rename("b-vol", "c-vol", store=url)
    renamed = Volume.from_name("c-vol", store=url)
    assert renamed.object_id == a.object_id
    assert b"".join(renamed.read_file("f.txt")) == b"kept across a rename"
    with pytest.raises(NotFound):
        Volume.from_name("b-vol", store=url).hydrate()

    Volume.delete("c-vol", store=url)
    assert objects(store, f"volumes/{a.object_id}/") == []
    with pytest.raises(NotFound):
        Volume.delete("c-vol", store=url)
    Volume.delete("c-vol", allow_missing=True, store=url)


def test_from_id(url: str) -> None:
    vol = Volume.create("data", store=url)
    upload(vol, {"x": b"1"})
    same = Volume.from_id(vol.object_id, store=url)
    assert [e.path for e in same.listdir()] == ["x"]
    with pytest.raises(InvalidArgument):
        Volume.from_id("not-an-id", store=url)
    with pytest.raises(NotFound):
        Volume.from_id("0" * 32, store=url).hydrate()


def test_ephemeral_volume_is_deleted_on_exit(url: str, store: Store) -> None:
    with Volume.ephemeral(store=url) as vol:
        upload(vol, {"a.txt": b"temporary"})
        assert b"".join(vol.read_file("/a.txt")) == b"temporary"
        volume_id = vol.object_id
        assert objects(store, f"volumes/{volume_id}/")
    assert objects(store, f"volumes/{volume_id}/") == []
    assert Volume.list(store=url) == []


def test_info(url: str) -> None:
    vol = Volume.create("data", store=url)
    info = vol.info()
    assert (info.head, info.files, info.bytes, info.last_commit) == (0, 0, 0, None)
    upload(vol, {"a": b"12345", "b/c": b"678"})
    info = vol.info()
    assert (info.name, info.version, info.head, info.files, info.bytes) == ("data", 2, 1, 2, 8)
    assert info.last_commit is not None and info.last_commit >= info.created


# -- listing and reading ---------------------------------------------------------------------


def test_listdir_and_iterdir_defaults(url: str) -> None:
    vol = Volume.from_name("data", create_if_missing=True, store=url)
    upload(vol, {"top.txt": b"t", "d/one.txt": b"1", "d/sub/two.txt": b"22"})

    assert [(e.path, e.type) for e in vol.listdir()] == [
        ("d", FileEntryType.DIRECTORY),
        ("top.txt", FileEntryType.FILE),
    ]
    assert [e.path for e in vol.iterdir("/")] == [
        "d",
        "d/one.txt",
        "d/sub",
        "d/sub/two.txt",
        "top.txt",
    ]
    assert [e.path for e in vol.listdir("d")] == ["d/one.txt", "d/sub"]
    assert [e.path for e in vol.listdir("/d/", recursive=True)] == [
        "d/one.txt",
        "d/sub",
        "d/sub/two.txt",
    ]
    (entry,) = vol.listdir("d/sub/two.txt")
    assert (entry.type, entry.size) == (FileEntryType.FILE, 2)
    assert entry.mtime > 0
    directory = next(e for e in vol.listdir() if e.path == "d")
    assert directory.size == 3
    with pytest.raises(NotFound):
        vol.listdir("nope")
    with pytest.raises(InvalidPath):
        vol.listdir("../etc")


def test_read_file_streams_chunks(url: str) -> None:
    with Volume.ephemeral(store=url, chunk_size=64 * 1024) as vol:
        data = os.urandom(1024 * 1024 + 10)
        upload(vol, {"big.bin": data})
        chunks = vol.read_file("big.bin")
        assert not isinstance(chunks, bytes | list)
        pieces = list(chunks)
        assert len(pieces) == 17
        assert max(len(p) for p in pieces) == 64 * 1024
        assert b"".join(pieces) == data

        sink = io.BytesIO()
        assert vol.read_file_into_fileobj("/big.bin", sink) == len(data)
        assert sink.getvalue() == data


def test_read_file_errors(url: str) -> None:
    vol = Volume.from_name("data", create_if_missing=True, store=url)
    upload(vol, {"d/f": b"x"})
    with pytest.raises(NotFound):
        vol.read_file("missing")  # at the call, not at the first chunk
    with pytest.raises(InvalidArgument, match="directory"):
        vol.read_file("d")


# -- uploads ----------------------------------------------------------------------------------


def test_batch_upload_is_one_commit(url: str, tmp_path: Path) -> None:
    vol = Volume.from_name("data", create_if_missing=True, store=url)
    local = tmp_path / "local"
    (local / "nested" / "deep").mkdir(parents=True)
    (local / "empty").mkdir()
    (local / "a.bin").write_bytes(os.urandom(300_000))
    (local / "nested" / "b.txt").write_text("b")
    (local / "nested" / "deep" / "c.txt").write_text("c")
    single = tmp_path / "single.txt"
    single.write_text("single")

    with vol.batch_upload() as batch:
        batch.put_directory(local, "/dir")
        batch.put_file(single, "/one/single.txt")
        batch.put_file(io.BytesIO(b"from memory"), "mem.txt")
    assert batch.seq == 1
    assert vol.info().head == 1
    assert sorted(e.path for e in vol.iterdir() if e.type == FileEntryType.FILE) == [
        "dir/a.bin",
        "dir/nested/b.txt",
        "dir/nested/deep/c.txt",
        "mem.txt",
        "one/single.txt",
    ]
    assert vol.stat("dir/empty").type == FileEntryType.DIRECTORY
    assert b"".join(vol.read_file("dir/a.bin")) == (local / "a.bin").read_bytes()


def test_batch_upload_publishes_nothing_on_exception(url: str, store: Store) -> None:
    vol = Volume.from_name("data", create_if_missing=True, store=url)
    upload(vol, {"before.txt": b"1"})
    with pytest.raises(RuntimeError), vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"never"), "a.txt")
        batch.put_file(io.BytesIO(b"never either"), "b.txt")
        raise RuntimeError("the caller failed halfway")
    assert vol.info().head == 1
    assert [e.path for e in vol.listdir()] == ["before.txt"]


def test_batch_upload_force(url: str) -> None:
    vol = Volume.from_name("data", create_if_missing=True, store=url)
    upload(vol, {"a.txt": b"first"})
    with pytest.raises(AlreadyExists, match=r"/a\.txt"):
        upload(vol, {"a.txt": b"second", "new.txt": b"n"})
    assert vol.info().head == 1
    assert [e.path for e in vol.listdir()] == ["a.txt"]
    upload(vol, {"a.txt": b"second"}, force=True)
    assert b"".join(vol.read_file("a.txt")) == b"second"
    # A file where the upload needs a directory is an existing file too.
    with pytest.raises(AlreadyExists):
        upload(vol, {"a.txt/inside": b"x"})


def test_batch_upload_refuses_bad_input(url: str, tmp_path: Path) -> None:
    vol = Volume.from_name("data", create_if_missing=True, store=url)
    upload(vol, {"d/f": b"x"})
    with vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"1"), "same")
        with pytest.raises(InvalidArgument, match="already part"):
            batch.put_file(io.BytesIO(b"2"), "/same")
        with pytest.raises(InvalidPath):
            batch.put_file(io.BytesIO(b"x"), "../escape")
        with pytest.raises(NotFound):
            batch.put_file(tmp_path / "missing", "m")
        with pytest.raises(InvalidArgument):
            batch.put_file(tmp_path, "dir-as-file")
    with pytest.raises(InvalidArgument, match="directory"), vol.batch_upload(force=True) as batch:
        batch.put_file(io.BytesIO(b"x"), "d")


def test_put_file_modes(url: str, tmp_path: Path) -> None:
    vol = Volume.from_name("data", create_if_missing=True, store=url)
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o750)
    with vol.batch_upload() as batch:
        batch.put_file(script, "run.sh")
        batch.put_file(io.BytesIO(b"x"), "plain")
        batch.put_file(io.BytesIO(b"x"), "secret", mode=0o600)
    files = vol.repo.state().files
    assert files["run.sh"].mode == 0o750
    assert files["plain"].mode == 0o644
    assert files["secret"].mode == 0o600


def test_limits_refuse_before_uploading(url: str, store: Store) -> None:
    vol = Volume.create("small", limits=Limits(max_files=2), store=url)
    with pytest.raises(LimitExceeded):
        upload(vol, {"a": b"1", "b": b"2", "c": b"3"})
    assert vol.info().head == 0
    assert content_objects(store, vol) == []
    upload(vol, {"a": b"1", "b": b"2"})
    with pytest.raises(LimitExceeded):
        vol.copy_files(["a"], "copy")


# -- removing and copying ---------------------------------------------------------------------


def test_remove_file(url: str) -> None:
    vol = Volume.from_name("data", create_if_missing=True, store=url)
    upload(vol, {"f": b"1", "d/a": b"2", "d/b": b"3"})
    vol.remove_file("/f")
    with pytest.raises(NotFound):
        vol.remove_file("f")
    with pytest.raises(InvalidArgument, match="recursive"):
        vol.remove_file("d")
    vol.remove_file("d", recursive=True)
    assert vol.listdir() == []
    with pytest.raises(InvalidPath):
        vol.remove_file("/")


def test_copy_files_reuses_content(url: str, store: Store) -> None:
    vol = Volume.from_name("data", create_if_missing=True, store=url)
    big = os.urandom(400_000)
    upload(vol, {"big.bin": big, "d/a.txt": b"a", "d/sub/b.txt": b"b"})
    before = content_objects(store, vol)

    vol.copy_files(["big.bin"], "copy.bin")
    vol.copy_files(["big.bin", "d/a.txt"], "into")  # several sources: into a directory
    vol.copy_files(["d"], "d2", recursive=True)
    vol.copy_files(["d/a.txt"], "d2/")  # trailing slash: into it

    assert content_objects(store, vol) == before
    assert b"".join(vol.read_file("copy.bin")) == big
    assert b"".join(vol.read_file("into/big.bin")) == big
    assert b"".join(vol.read_file("into/a.txt")) == b"a"
    assert b"".join(vol.read_file("d2/sub/b.txt")) == b"b"
    assert b"".join(vol.read_file("d2/a.txt")) == b"a"
    with pytest.raises(InvalidArgument, match="recursive"):
        vol.copy_files(["d"], "d3")
    with pytest.raises(InvalidArgument, match="itself"):
        vol.copy_files(["d"], "d/inner", recursive=True)
    with pytest.raises(NotFound):
        vol.copy_files(["missing"], "x")
    with pytest.raises(InvalidArgument):
        vol.copy_files("big.bin", "x")  # type: ignore[arg-type]


# -- downloads --------------------------------------------------------------------------------


def test_download_round_trip_and_force(url: str, tmp_path: Path) -> None:
    vol = Volume.from_name("data", create_if_missing=True, store=url)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "bin").write_bytes(bytes(range(256)) * 2000)
    (src / "sub" / "x.txt").write_text("x")
    (src / "sub" / "x.txt").chmod(0o600)
    with vol.batch_upload() as batch:
        batch.put_directory(src, "tree")

    out = tmp_path / "out"
    assert vol.download("tree", out) == (2, 512_001)
    assert (out / "bin").read_bytes() == (src / "bin").read_bytes()
    assert (out / "sub" / "x.txt").stat().st_mode & 0o777 == 0o600
    assert (out / "sub" / "x.txt").stat().st_mtime_ns == (src / "sub" / "x.txt").stat().st_mtime_ns

    (tmp_path / "single").write_text("local, precious")
    with pytest.raises(AlreadyExists):
        vol.download("tree/sub/x.txt", tmp_path / "single")
    assert (tmp_path / "single").read_text() == "local, precious"
    vol.download("tree/sub/x.txt", tmp_path / "single", force=True)
    assert (tmp_path / "single").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- mount options ----------------------------------------------------------------------------


def test_with_mount_options(url: str) -> None:
    vol = Volume.from_name("data", create_if_missing=True, store=url)
    ro = vol.with_mount_options(read_only=True, sub_path="/models/")
    assert (ro.read_only, ro.sub_path, vol.read_only, vol.sub_path) == (True, "models", False, "")
    with pytest.raises(ReadOnly):
        upload(ro, {"a": b"1"})
    with pytest.raises(ReadOnly):
        ro.commit()
    assert ro.listdir() == []
    upload(vol, {"a": b"1"})
    assert [e.path for e in ro.listdir()] == ["a"]
    with pytest.raises(InvalidPath):
        vol.with_mount_options(sub_path="../up")


def test_commit_outside_a_mount_says_so(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KVOL_MOUNTS", raising=False)
    # Mount points of the whole machine are searched too: a name nobody else uses.
    vol = Volume.from_name(f"data-{uuid.uuid4().hex[:12]}", create_if_missing=True, store=url)
    with pytest.raises(InvalidArgument, match="not mounted here, so there is nothing to commit"):
        vol.commit()
    with pytest.raises(InvalidArgument, match="nothing to reload"):
        vol.reload()
