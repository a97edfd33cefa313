"""The control socket, served for a stand-in working copy and reached by the SDK's client."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvol import errors
from kvol.control import SOCKET_NAME, ControlServer
from kvol.mounted import ControlMount


class Target:
    def __init__(self) -> None:
        self.messages: list[str | None] = []
        self.busy = False

    def commit(self, message: str | None = None) -> dict[str, Any]:
        self.messages.append(message)
        return {"seq": 7, "files": 1, "bytes": 3}

    def reload(self) -> dict[str, Any]:
        if self.busy:
            raise errors.VolumeBusy("volume busy", [(42, "python", "/data/f")])
        return {"from_seq": 1, "to_seq": 2, "files": 5}

    def status(self) -> dict[str, Any]:
        raise errors.StoreUnavailable("store down")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Target, Path]]:
    # Deeper than a unix socket address may be, like kubelet target paths.
    root = tmp_path / ("x" * 60) / ("y" * 60)
    target = Target()
    server = ControlServer(root / ".kvol" / SOCKET_NAME, target)
    server.start()
    server.start()  # idempotent
    yield target, root
    server.stop()
    assert not (root / ".kvol" / SOCKET_NAME).exists()


def test_commit_reload_and_errors(served: tuple[Target, Path]) -> None:
    target, root = served
    mount = ControlMount(root)
    assert mount.commit("hello") == {"seq": 7, "files": 1, "bytes": 3}
    assert mount.commit() == {"seq": 7, "files": 1, "bytes": 3}
    assert target.messages == ["hello", None]
    assert mount.reload()["to_seq"] == 2
    target.busy = True
    with pytest.raises(errors.VolumeBusy) as busy:
        mount.reload()
    assert busy.value.holders == [(42, "python", "/data/f")]
    with pytest.raises(errors.StoreUnavailable):
        mount.status()


def test_reachable_with_curl(served: tuple[Target, Path], tmp_path: Path) -> None:
    _, root = served
    # curl needs a short socket path: reach it through a short symlink to its directory.
    link = Path("/tmp") / f"kvol-ctl-{tmp_path.name[-8:]}"
    link.unlink(missing_ok=True)
    link.symlink_to(root / ".kvol")
    try:
        out = subprocess.run(
            [
                "curl",
                "-s",
                "-X",
                "POST",
                "--unix-socket",
                str(link / SOCKET_NAME),
                "http://kvol/commit",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        link.unlink()
    assert '"seq": 7' in out


def test_a_private_socket_is_private_from_the_moment_it_is_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watcher's socket (0600) is made with that mode by bind itself: a chmod after it
    would leave a moment in which, under a permissive umask, anyone could connect."""
    import os
    import stat

    from kvol import control

    chmods: list[int] = []
    real_chmod = os.chmod

    def chmod_at_start(path: Any, mode: int) -> None:
        chmods.append(stat.S_IMODE(os.lstat(path).st_mode))  # the mode bind gave it
        real_chmod(path, mode)

    monkeypatch.setattr(control.os, "chmod", chmod_at_start)
    old = os.umask(0)
    try:
        server = ControlServer(tmp_path / SOCKET_NAME, Target(), socket_mode=0o600)
        server.start()
        server.stop()
    finally:
        os.umask(old)
    assert chmods == [0o600]
