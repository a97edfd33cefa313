"""The SDK never follows a local symbolic link out of what it uploads or into what it
downloads, writes names of any legal length, and deletes only what it saw."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from kvol import InvalidArgument, Volume
from kvol.store import FilesystemStore


@pytest.fixture
def store(tmp_path: Path) -> FilesystemStore:
    return FilesystemStore(tmp_path / "store")


@pytest.fixture
def vol(store: FilesystemStore) -> Volume:
    return Volume.create("data", store=store)


def _files(vol: Volume) -> dict[str, bytes]:
    return {
        e.path: b"".join(vol.read_file(e.path))
        for e in vol.listdir("/", recursive=True)
        if e.type == "file"
    }


def _upload(vol: Volume, files: dict[str, bytes]) -> None:
    with vol.batch_upload(force=True) as batch:
        for path, data in files.items():
            batch.put_file(io.BytesIO(data), path)


# -- put ---------------------------------------------------------------------------------------


def test_put_directory_never_uploads_what_a_link_points_to(
    vol: Volume, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = tmp_path / "outside"
    (outside / "secrets").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(b"private")
    (outside / "secrets" / "key").write_bytes(b"private key")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "real.txt").write_bytes(b"mine")
    (tree / "passwd").symlink_to("/etc/passwd")
    (tree / "secret.txt").symlink_to(outside / "secret.txt")
    (tree / "sub" / "inside").symlink_to(tree / "sub" / "real.txt")
    (tree / "linked-dir").symlink_to(outside / "secrets")
    with caplog.at_level(logging.WARNING), vol.batch_upload() as batch:
        batch.put_directory(tree, "/up")
    assert _files(vol) == {"up/sub/real.txt": b"mine"}
    assert sorted(batch.skipped) == sorted(
        str(tree / p) for p in ("passwd", "secret.txt", "sub/inside", "linked-dir")
    )
    assert "passwd" in caplog.text


def test_an_upload_refuses_a_file_swapped_for_a_link_before_it_is_read(
    vol: Volume, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"ok")
    with pytest.raises(InvalidArgument, match="link"), vol.batch_upload() as batch:
        batch.put_directory(tree, "/")
        # Read when the batch ends: by then it leads out of the tree.
        (tree / "f").unlink()
        (tree / "f").symlink_to("/etc/passwd")
    assert _files(vol) == {}


# -- get ---------------------------------------------------------------------------------------


def test_get_never_writes_through_a_link_in_the_destination(
    vol: Volume, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _upload(vol, {"tree/sub/f.txt": b"from the volume", "tree/top.txt": b"top"})
    victim = tmp_path / "victim"
    victim.mkdir()
    dest = tmp_path / "dest"
    (dest / "tree").mkdir(parents=True)
    (dest / "tree" / "sub").symlink_to(victim)
    with caplog.at_level(logging.WARNING):
        files, _ = vol.download("/tree", dest, force=True)
    assert list(victim.iterdir()) == []
    assert (dest / "tree" / "top.txt").read_bytes() == b"top"
    assert files == 1
    assert "sub" in caplog.text


def test_get_replaces_a_link_where_a_file_goes_and_leaves_its_target(
    vol: Volume, tmp_path: Path
) -> None:
    _upload(vol, {"f.txt": b"new"})
    target = tmp_path / "target"
    target.write_bytes(b"keep me")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "f.txt").symlink_to(target)
    vol.download("/f.txt", dest, force=True)
    assert target.read_bytes() == b"keep me"
    assert not (dest / "f.txt").is_symlink()
    assert (dest / "f.txt").read_bytes() == b"new"


def test_get_into_a_named_directory_reached_by_a_link_in_it(vol: Volume, tmp_path: Path) -> None:
    # get /tree DEST where DEST/tree is a link: the link is below what was named.
    _upload(vol, {"tree/f": b"x"})
    victim = tmp_path / "victim"
    victim.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "tree").symlink_to(victim)
    vol.download("/tree", dest, force=True)
    assert list(victim.iterdir()) == []


@pytest.mark.parametrize("length", [241, 250, 255])
def test_get_writes_names_of_any_legal_length(vol: Volume, tmp_path: Path, length: int) -> None:
    name = "n" * length
    _upload(vol, {f"d/{name}": b"long"})
    assert vol.download("/d", tmp_path / "out") == (1, 4)
    assert (tmp_path / "out" / name).read_bytes() == b"long"
    assert os.listdir(tmp_path / "out") == [name]  # no temporary left behind


def test_get_never_plants_setuid_files(vol: Volume, tmp_path: Path) -> None:
    with vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"#!/bin/sh\n"), "/tool", mode=0o4755)
    vol.download("/tool", tmp_path / "tool")
    assert (tmp_path / "tool").stat().st_mode & 0o7777 == 0o755


# -- deleting only what was seen ------------------------------------------------------------


class _Interleaved(FilesystemStore):
    """A real store that lets ``meanwhile`` run once, right before a commit is published."""

    def __init__(self, root: Path, meanwhile: Callable[[], None]) -> None:
        super().__init__(root)
        self._meanwhile: Callable[[], None] | None = meanwhile

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if "/log/" in key and self._meanwhile is not None:
            run, self._meanwhile = self._meanwhile, None
            run()
        return super().put_if_absent(key, data)


def test_rm_r_keeps_a_file_another_writer_added_meanwhile(tmp_path: Path) -> None:
    root = tmp_path / "store"
    other = Volume.create("data", store=FilesystemStore(root))
    _upload(other, {"dir/old.txt": b"old", "dir/sub/old2.txt": b"old2", "keep.txt": b"k"})

    def add_a_file() -> None:
        _upload(other, {"dir/sub/new.txt": b"added meanwhile"})

    remover = Volume.from_name("data", store=_Interleaved(root, add_a_file))
    remover.remove_file("/dir", recursive=True)
    assert _files(other) == {"dir/sub/new.txt": b"added meanwhile", "keep.txt": b"k"}


def test_rm_r_removes_empty_directories_it_saw(vol: Volume) -> None:
    with vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"x"), "/a/b/f")
    vol.copy_files(["/a"], "/copy", recursive=True)  # explicit directories
    vol.remove_file("/copy", recursive=True)
    vol.remove_file("/a", recursive=True)
    assert vol.listdir("/", recursive=True) == []


def test_rm_of_a_file_leaves_a_directory_another_writer_put_there(tmp_path: Path) -> None:
    root = tmp_path / "store"
    other = Volume.create("data", store=FilesystemStore(root))
    _upload(other, {"p": b"a file"})

    def replace_with_a_directory() -> None:
        _upload(other, {"p/inside.txt": b"theirs"})

    remover = Volume.from_name("data", store=_Interleaved(root, replace_with_a_directory))
    remover.remove_file("/p")
    assert _files(other) == {"p/inside.txt": b"theirs"}


def test_cp_never_replaces_a_directory_with_a_file(vol: Volume) -> None:
    _upload(vol, {"x": b"a file", "dst/x/theirs.txt": b"t"})
    with pytest.raises(InvalidArgument, match="directory"):
        vol.copy_files(["/x"], "/dst/")
    _upload(vol, {"tree/x": b"file x", "target/tree/x/deep": b"deep"})
    with pytest.raises(InvalidArgument, match="directory"):
        vol.copy_files(["/tree"], "/target/", recursive=True)
    assert _files(vol)["target/tree/x/deep"] == b"deep"


def test_get_refuses_a_local_file_where_a_directory_goes_before_writing(
    vol: Volume, tmp_path: Path
) -> None:
    _upload(vol, {"a.txt": b"a", "d/f": b"f"})
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "d").write_bytes(b"a local file")
    with pytest.raises(InvalidArgument, match="not a directory"):
        vol.download("/", dest, force=True)
    assert sorted(os.listdir(dest)) == ["d"]
