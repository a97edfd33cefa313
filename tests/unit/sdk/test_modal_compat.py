"""kvol.Volume where code written for ``modal.Volume`` relies on Modal's behaviour (each
checked against modal-client's source): positional flags, ``Volume.objects``, errors a
Modal program catches, ``info()`` and ``FileEntryType``."""

from __future__ import annotations

import io
import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from kvol import FileEntryType, KvolError, Volume, VolumeBusy
from kvol.catalog import Catalog
from kvol.errors import VersionMismatch
from kvol.store import open_store
from kvol.workcopy import WorkingCopy


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


@pytest.fixture(autouse=True)
def _no_configured_mounts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVOL_MOUNTS", raising=False)


def put(vol: Volume, files: dict[str, bytes]) -> None:
    with vol.batch_upload() as batch:
        for path, data in files.items():
            batch.put_file(io.BytesIO(data), path)


def test_put_file_to_a_path_ending_with_a_slash_is_a_value_error(url: str) -> None:
    vol = Volume.from_name("data", create_if_missing=True, store=url)
    with pytest.raises(ValueError, match="ends with '/'"), vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"x"), "some/dir/")
    with pytest.raises(ValueError), vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"x"), "/")
    assert vol.listdir("/") == []
    assert vol.repo.head() == 0


def test_recursive_and_force_are_accepted_positionally(url: str) -> None:
    vol = Volume.from_name("data", create_if_missing=True, store=url)
    put(vol, {"d/a.txt": b"a", "d/sub/b.txt": b"b"})
    with vol.batch_upload(True) as batch:  # force, as Modal's batch_upload(force=False)
        batch.put_file(io.BytesIO(b"A"), "d/a.txt")
    vol.copy_files(["d"], "e", True)
    vol.remove_file("d", True)
    assert [e.path for e in vol.listdir("/", recursive=True)] == [
        "e",
        "e/a.txt",
        "e/sub",
        "e/sub/b.txt",
    ]
    assert b"".join(vol.read_file("e/a.txt")) == b"A"


def test_volume_objects_create_list_delete(url: str) -> None:
    assert Volume.objects.create("first", store=url) is None  # Modal returns no handle
    Volume.objects.create("first", allow_existing=True, store=url)
    with pytest.raises(FileExistsError):
        Volume.objects.create("first", store=url)
    time.sleep(0.01)
    Volume.objects.create("second", version=1, store=url)
    # An existing volume of another version is fine unless a version is asked for.
    Volume.objects.create("second", allow_existing=True, store=url)
    with pytest.raises(VersionMismatch):
        Volume.objects.create("second", version=2, allow_existing=True, store=url)

    listed = Volume.objects.list(store=url)
    assert [v.name for v in listed] == ["second", "first"]  # newest first, as Modal
    assert [v.name for v in Volume.objects.list(max_objects=1, store=url)] == ["second"]
    second = listed[0].info().created
    before = datetime.fromtimestamp(second) - timedelta(microseconds=1)
    assert [v.name for v in Volume.objects.list(created_before=before, store=url)] == ["first"]
    assert [v.name for v in Volume.objects.list(created_before=before.isoformat(), store=url)] == [
        "first"
    ]
    with pytest.raises(ValueError):
        Volume.objects.list(max_objects=-1, store=url)

    Volume.objects.delete("first", store=url)
    with pytest.raises(FileNotFoundError):
        Volume.objects.delete("first", store=url)
    Volume.objects.delete("first", allow_missing=True, store=url)
    assert [v.name for v in Volume.objects.list(store=url)] == ["second"]


def test_a_busy_reload_is_a_runtime_error(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vol = Volume.from_name("data", create_if_missing=True, store=url)
    put(vol, {"held.txt": b"held"})
    wc = WorkingCopy.create(vol.repo, tmp_path / "copy")
    monkeypatch.setenv("KVOL_MOUNTS", json.dumps({"data": str(wc.root)}))
    put(vol, {"new.txt": b"new"})  # something for the reload to apply

    # RuntimeError is what Modal code catches.
    with open(wc.root / "held.txt", "rb"), pytest.raises(RuntimeError) as caught:
        vol.reload()
    assert isinstance(caught.value, VolumeBusy) and isinstance(caught.value, KvolError)
    assert not (wc.root / "new.txt").exists()
    vol.reload()
    assert (wc.root / "new.txt").read_bytes() == b"new"


def test_info_has_created_at_and_created_by(url: str) -> None:
    vol = Volume.from_name("data", create_if_missing=True, store=url)
    info = vol.info()
    assert info.created_at.tzinfo is not None  # aware, local, as Modal's
    assert info.created_at.timestamp() == pytest.approx(info.created)
    assert info.created_by is None  # nobody recorded
    assert info.to_dict()["created_at"] == info.created_at.isoformat()

    Catalog(open_store(url)).create("managed", owner="kvol-operator")
    assert Volume.from_name("managed", store=url).info().created_by == "kvol-operator"


def test_file_entry_type_has_modals_numbers_and_kvols_names(url: str) -> None:
    vol = Volume.from_name("data", create_if_missing=True, store=url)
    put(vol, {"d/f.txt": b"f"})
    directory, file = vol.listdir("/", recursive=True)
    # modal.FileEntryType is an IntEnum: FILE = 1, DIRECTORY = 2.
    assert (file.type, directory.type) == (1, 2)
    assert file.type != 2 and directory.type != 1
    assert isinstance(file.type, int)
    assert [int(t) for t in FileEntryType] == [0, 1, 2, 3, 4, 5]
    # kvol's own names still compare, print and parse as before.
    assert file.type == "file" and directory.type == "directory"
    assert file.type != "directory"
    assert (str(file.type), f"{directory.type:<10}|") == ("file", "directory |")
    assert FileEntryType("directory") is FileEntryType.DIRECTORY is FileEntryType(2)
    assert file.to_dict()["type"] == "file"
