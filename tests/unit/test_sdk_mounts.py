"""Volume.commit()/reload() reaching a mounted working copy: a local copy made like
``kvol volume mount`` does, and a CSI mount's control socket served by the plugin's own
control server."""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from kvol import InvalidArgument, NotFound, Volume, VolumeBusy
from kvol.control import ControlServer
from kvol.errors import LimitExceeded
from kvol.repo import Repo
from kvol.store import open_store
from kvol.workcopy import WorkingCopy


@pytest.fixture(autouse=True)
def _no_configured_mounts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVOL_MOUNTS", raising=False)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


def local_copy(url: str, name: str, root: Path) -> tuple[Volume, WorkingCopy]:
    vol = Volume.from_name(name, create_if_missing=True, store=url)
    return vol, WorkingCopy.create(vol.repo, root)


def test_commit_and_reload_find_the_copy_from_cwd(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vol, wc = local_copy(url, "data", tmp_path / "copy")
    (wc.root / "sub").mkdir()
    (wc.root / "sub" / "mine.txt").write_text("mine")
    monkeypatch.chdir(wc.root / "sub")

    fresh = Volume.from_name("data", store=url)  # another handle, as a program would make
    result = fresh.commit("from the sdk")
    assert result["seq"] == 1
    assert [e.path for e in vol.listdir("sub")] == ["sub/mine.txt"]
    assert vol.repo.history()[0].message == "from the sdk"

    with vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"theirs"), "theirs.txt")
    assert not (wc.root / "theirs.txt").exists()
    monkeypatch.chdir(tmp_path)  # a cwd inside the copy would make the reload busy
    monkeypatch.setenv("KVOL_MOUNTS", json.dumps({"data": str(wc.root)}))
    reloaded = fresh.reload()
    assert (reloaded["from_seq"], reloaded["to_seq"]) == (1, 2)
    assert (wc.root / "theirs.txt").read_text() == "theirs"


def test_kvol_mounts_finds_a_copy_by_id(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vol, wc = local_copy(url, "data", tmp_path / "copy")
    (wc.root / "f").write_text("f")
    monkeypatch.chdir(tmp_path)
    # Listed under another name: matched by the volume id in its configuration.
    monkeypatch.setenv("KVOL_MOUNTS", json.dumps({"alias": str(wc.root)}))
    assert Volume.from_id(vol.object_id, store=url).commit()["seq"] == 1


def test_a_copy_of_another_volume_is_not_used(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, wc = local_copy(url, "other", tmp_path / "copy")
    # Mount points of the whole machine are searched too: a name nobody else uses.
    name = f"data-{uuid.uuid4().hex[:12]}"
    Volume.create(name, store=url)
    monkeypatch.chdir(wc.root)
    with pytest.raises(InvalidArgument, match="not mounted"):
        Volume.from_name(name, store=url).commit()


def test_kvol_mounts_naming_no_mount_is_an_error(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVOL_MOUNTS", json.dumps({"data": str(tmp_path)}))
    with pytest.raises(NotFound, match="KVOL_MOUNTS"):
        Volume.from_name("data", store=url).commit()
    monkeypatch.setenv("KVOL_MOUNTS", "not json")
    with pytest.raises(InvalidArgument, match="KVOL_MOUNTS"):
        Volume.from_name("data", store=url).commit()


def test_failed_commit_names_the_copy_that_keeps_the_changes(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(url)
    from kvol.catalog import Catalog
    from kvol.model import Limits

    Catalog(store).create("tiny", limits=Limits(max_files=1))
    vol = Volume.from_name("tiny", store=url)
    wc = WorkingCopy.create(vol.repo, tmp_path / "copy")
    (wc.root / "a").write_text("a")
    (wc.root / "b").write_text("b")
    monkeypatch.chdir(wc.root)
    with pytest.raises(LimitExceeded, match=f"still in {wc.root}"):
        vol.commit()
    assert (wc.root / "a").exists() and (wc.root / "b").exists()


# -- the control socket of a CSI mount --------------------------------------------------------


class PluginSide:
    """What the plugin serves for one mount: its working copy, behind the control socket."""

    def __init__(self, name: str, wc: WorkingCopy) -> None:
        self.name = name
        self.wc = wc
        self.busy = False
        self.calls: list[str] = []

    def commit(self, message: str | None = None) -> dict[str, Any]:
        self.calls.append(f"commit:{message}")
        result = self.wc.commit(message)
        return {"seq": result.seq, "files": result.files, "bytes": result.bytes}

    def reload(self) -> dict[str, Any]:
        self.calls.append("reload")
        if self.busy:
            raise VolumeBusy("volume busy: held by app[42] /data/f", [(42, "app", "/data/f")])
        result = self.wc.reload()
        return {"from_seq": result.from_seq, "to_seq": result.to_seq, "files": result.files}

    def status(self) -> dict[str, Any]:
        st = self.wc.status()
        return {
            "volume": self.name,
            "namespace": "default",
            "volume_id": st.volume_id,
            "base_seq": st.base_seq,
            "changed": list(st.changed),
            "deleted": list(st.deleted),
            "uncommitted_bytes": st.uncommitted_bytes,
        }


@pytest.mark.parametrize("deep", [False, True], ids=["short-path", "path-over-108-bytes"])
def test_commit_and_reload_through_the_control_socket(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deep: bool
) -> None:
    store = open_store(url)
    from kvol.catalog import Catalog

    meta = Catalog(store).create("shared")
    mount = tmp_path / ("d" * 60 if deep else "m") / ("e" * 60 if deep else "mnt")
    wc = WorkingCopy.create(Repo(store, meta.id), mount, meta_dir=tmp_path / "plugin-state")
    plugin = PluginSide("shared", wc)
    server = ControlServer(mount / ".kvol" / "control.sock", plugin)
    server.start()
    try:
        (mount / "out.txt").write_text("from the pod")
        monkeypatch.chdir(mount)
        # Inside a pod the SDK has no store: the name alone finds the mount.
        nowhere = tmp_path / "no-store-here"
        pod_vol = Volume.from_name("shared", store=f"file://{nowhere}")
        assert pod_vol.commit("pod commit") == {"seq": 1, "files": 1, "bytes": 12}
        assert plugin.calls == ["commit:pod commit"]
        assert not nowhere.exists()

        outside = Volume.from_name("shared", store=url)
        assert b"".join(outside.read_file("out.txt")) == b"from the pod"
        with outside.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"new"), "new.txt")
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("KVOL_MOUNTS", json.dumps({"shared": str(mount)}))
        assert pod_vol.reload()["to_seq"] == 2
        assert (mount / "new.txt").read_text() == "new"

        plugin.busy = True
        with pytest.raises(VolumeBusy) as busy:
            pod_vol.reload()
        assert busy.value.holders == [(42, "app", "/data/f")]
    finally:
        server.stop()
        wc.close(final_commit=False)


# -- mount points ---------------------------------------------------------------------------------


def serve(mount: Path, url: str, name: str, tmp_path: Path) -> tuple[ControlServer, WorkingCopy]:
    from kvol.catalog import Catalog

    store = open_store(url)
    meta = Catalog(store).create(name, allow_existing=True)
    wc = WorkingCopy.create(Repo(store, meta.id), mount, meta_dir=tmp_path / f"state-{name}")
    server = ControlServer(mount / ".kvol" / "control.sock", PluginSide(name, wc))
    server.start()
    return server, wc


def test_mount_points_are_read_from_mountinfo(url: str, tmp_path: Path) -> None:
    from kvol import mounted

    with_space = tmp_path / "my data"
    server, wc = serve(with_space, url, "spaced", tmp_path)
    try:
        plain = tmp_path / "plain"
        plain.mkdir()
        info = tmp_path / "mountinfo"
        escaped = str(with_space).replace(" ", "\\040")
        info.write_text(
            f"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
            f"90 22 8:1 /x {escaped} rw,relatime - ext4 /dev/sda1 rw\n"
            f"91 22 8:1 /y {plain} rw,relatime - ext4 /dev/sda1 rw\n"
            "garbage\n"
        )
        assert mounted.mount_points(str(info)) == [with_space]
        assert mounted.mount_points(str(tmp_path / "missing")) == []
    finally:
        server.stop()
        wc.close(final_commit=False)


@pytest.mark.root
def test_a_pod_finds_its_mount_point_without_being_told(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    source = tmp_path / "plugin-target"
    name = f"data-{uuid.uuid4().hex[:12]}"  # other mounts of the machine are searched too
    server, wc = serve(source, url, name, tmp_path)
    point = tmp_path / "data"
    point.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(point)], check=True)
    try:
        (point / "result.txt").write_text("written in the pod")
        monkeypatch.chdir(tmp_path)  # not inside the mount, no $KVOL_MOUNTS
        vol = Volume.from_name(name, store=f"file://{tmp_path / 'no-store'}")
        assert vol.commit()["seq"] == 1
        assert [e.path for e in Volume.from_name(name, store=url).listdir()] == ["result.txt"]
    finally:
        subprocess.run(["umount", str(point)], check=True)
        server.stop()
        wc.close(final_commit=False)


def test_mountinfo_escapes_are_undone_in_paths_that_are_not_utf8() -> None:
    from kvol.mounting import unescape

    # As a mount table read with surrogateescape holds a path of Latin-1 bytes: the
    # escaped space is undone and the other bytes come back as they were.
    raw = b"/mnt/caf\xe9\\040data"
    field = raw.decode("utf-8", "surrogateescape")
    assert os.fsencode(unescape(field)) == b"/mnt/caf\xe9 data"
    assert unescape("/plain") == "/plain"
    assert unescape("/a\\134b\\011c") == "/a\\b\tc"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"garbage, not HTTP", "did not answer in HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n{}", "2 bytes of a body of 40"),
        (b"", "did not answer in HTTP"),
    ],
)
def test_a_control_socket_answering_no_http_is_a_clear_error(
    tmp_path: Path, answer: bytes, expected: str
) -> None:
    import socket
    import threading

    from kvol.errors import StoreUnavailable
    from kvol.mounted import ControlMount

    (tmp_path / ".kvol").mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / ".kvol" / "control.sock"))
    server.listen()

    def answer_once() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(answer)

    thread = threading.Thread(target=answer_once)
    thread.start()
    try:
        with pytest.raises(StoreUnavailable, match=expected):
            ControlMount(tmp_path).commit()
    finally:
        thread.join(timeout=10)
        server.close()


def test_a_watched_copys_socket_that_nobody_answers_is_passed_by(url: str, tmp_path: Path) -> None:
    """A local copy whose watcher was killed: its socket file is left and nothing
    listens; commit, reload and status act on the copy directly. A pod's mount (no
    configuration beside the socket) says the socket did not answer instead."""
    import socket

    from kvol.errors import StoreUnavailable
    from kvol.mounted import ControlMount, at

    vol, wc = local_copy(url, "vol", tmp_path / "copy")
    wc.close(final_commit=False)
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(tmp_path / "copy" / ".kvol" / "control.sock"))
    left.close()  # bound, never listening: as a killed process leaves it
    mount = at(tmp_path / "copy")
    assert isinstance(mount, ControlMount) and mount.local
    (tmp_path / "copy" / "f.txt").write_bytes(b"committed anyway")
    assert mount.status()["changed"] == ["f.txt"]
    assert mount.commit()["seq"] == 1
    assert mount.reload()["to_seq"] == 1
    assert b"".join(vol.read_file("f.txt")) == b"committed anyway"

    pod = tmp_path / "pod"
    (pod / ".kvol").mkdir(parents=True)
    (tmp_path / "copy" / ".kvol" / "control.sock").rename(pod / ".kvol" / "control.sock")
    with pytest.raises(StoreUnavailable, match="did not answer"):
        ControlMount(pod).commit()
