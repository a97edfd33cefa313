"""``kvol volume watch``: a real watcher process holding a local working copy, and the
``kvol`` commands that find it through the copy's control socket (kvol.watching)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_cli import KVOL, run

SOCKET = Path(".kvol/control.sock")


class Watch:
    """A ``kvol volume watch`` process, its stdout read line by line as it comes."""

    def __init__(self, store: str, copy: Path, interval: str = "300") -> None:
        env = {**os.environ, "KVOL_STORE": store, "PYTHONSAFEPATH": "1"}
        self.proc = subprocess.Popen(
            [KVOL, "volume", "watch", str(copy), "--interval", interval],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.lines: list[str] = []
        self._pending = b""
        self._ended = False

    def wait_for(self, text: str, timeout: float = 60) -> str:
        """The first line of stdout holding ``text`` (read so far or still to come)."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._ended:
                    raise AssertionError(f"no {text!r} from the watcher: {self.lines}")
                if sel.select(remaining):
                    chunk = os.read(self.proc.stdout.fileno(), 65536)
                    self._ended = not chunk
                    *done, self._pending = (self._pending + chunk).split(b"\n")
                    self.lines += [d.decode() for d in done]

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=60)
        self._pending += out
        return self.proc.returncode, err.decode()

    def rest(self) -> str:
        """Everything on stdout after the process ended."""
        return "\n".join(self.lines) + "\n" + self._pending.decode()


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


@pytest.fixture
def copy(store: str, tmp_path: Path) -> Path:
    assert run(store, "volume", "create", "data").returncode == 0
    root = tmp_path / "copy"
    assert run(store, "volume", "mount", "data", str(root)).returncode == 0
    return root


@pytest.fixture
def watch(store: str, copy: Path) -> Iterator[Watch]:
    watcher = Watch(store, copy)
    watcher.wait_for("Watching")
    yield watcher
    if watcher.proc.poll() is None:
        watcher.proc.kill()
        watcher.proc.wait(timeout=30)


def ok(store: str, *args: str) -> str:
    result = run(store, *args)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def volume_files(store: str, tmp_path: Path, name: str = "check") -> dict[str, bytes]:
    """The volume's files as a new copy made now sees them."""
    other = tmp_path / name
    ok(store, "volume", "mount", "data", str(other))
    return {
        str(p.relative_to(other)): p.read_bytes()
        for p in other.rglob("*")
        if p.is_file() and ".kvol" not in p.parts
    }


def test_commit_status_and_reload_in_a_watched_copy_are_answered_by_the_watcher(
    store: str, copy: Path, watch: Watch, tmp_path: Path
) -> None:
    sock = copy / SOCKET
    assert stat.S_ISSOCK(sock.lstat().st_mode)
    # Only the copy's user may commit or reload it through the socket.
    assert stat.S_IMODE(sock.lstat().st_mode) == 0o600

    (copy / "a.txt").write_bytes(b"first")
    shown = ok(store, "volume", "status", str(copy))
    assert f"watched: committed every 300s by kvol volume watch (pid {watch.proc.pid})" in shown
    status = json.loads(ok(store, "volume", "status", str(copy), "--json"))
    assert status["watched_by"] == watch.proc.pid
    assert status["changed"] == ["a.txt"]
    committed = json.loads(ok(store, "volume", "commit", str(copy), "--json"))
    assert committed["seq"] == 1 and committed["files"] == 1
    assert "committed 1 file (5 B) as commit 1 (asked)" in watch.wait_for("as commit 1")
    assert volume_files(store, tmp_path) == {"a.txt": b"first"}

    # Another copy's commit comes in through the watcher's reload.
    other = tmp_path / "other"
    ok(store, "volume", "mount", "data", str(other))
    (other / "b.txt").write_bytes(b"from the other copy")
    ok(store, "volume", "commit", str(other))
    reloaded = json.loads(ok(store, "volume", "reload", str(copy), "--json"))
    assert (reloaded["from_seq"], reloaded["to_seq"]) == (1, 2)
    assert (copy / "b.txt").read_bytes() == b"from the other copy"
    # What the reload wrote is not a change of this copy.
    assert json.loads(ok(store, "volume", "status", str(copy), "--json"))["changed"] == []


def test_a_watcher_commits_every_interval_and_once_more_when_stopped(
    store: str, copy: Path, tmp_path: Path
) -> None:
    watcher = Watch(store, copy, interval="0.3")
    try:
        watcher.wait_for("Watching")
        (copy / "ticked.txt").write_bytes(b"by the interval")
        assert "as commit 1" in watcher.wait_for("committed 1 file")
        assert volume_files(store, tmp_path) == {"ticked.txt": b"by the interval"}
    finally:
        watcher.proc.kill()
        watcher.proc.wait(timeout=30)

    watcher = Watch(store, copy)  # an interval that never comes in this test
    watcher.wait_for("Watching")
    (copy / "last.txt").write_bytes(b"left at the end")
    code, err = watcher.stop(signal.SIGINT)
    assert code == 0, err
    assert "stopping: committing what is left" in err
    assert "as commit 2 (final)" in watcher.rest()
    assert volume_files(store, tmp_path, "after") == {
        "ticked.txt": b"by the interval",
        "last.txt": b"left at the end",
    }
    assert not (copy / SOCKET).exists()


def test_a_killed_watchers_socket_is_passed_by_and_replaced(
    store: str, copy: Path, watch: Watch, tmp_path: Path
) -> None:
    watch.proc.kill()
    watch.proc.wait(timeout=30)
    assert stat.S_ISSOCK((copy / SOCKET).lstat().st_mode)  # left behind
    (copy / "after-kill.txt").write_bytes(b"still committed")
    committed = json.loads(ok(store, "volume", "commit", str(copy), "--json"))
    assert committed["seq"] == 1
    assert "watched_by" not in json.loads(ok(store, "volume", "status", str(copy), "--json"))
    assert volume_files(store, tmp_path) == {"after-kill.txt": b"still committed"}

    again = Watch(store, copy)
    try:
        again.wait_for("Watching")
        status = json.loads(ok(store, "volume", "status", str(copy), "--json"))
        assert status["watched_by"] == again.proc.pid
    finally:
        code, err = again.stop()
    assert code == 0, err


def test_one_watcher_per_copy(store: str, copy: Path, watch: Watch) -> None:
    second = run(store, "volume", "watch", str(copy))
    assert second.returncode == 4
    lines = second.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert f"already watched by another kvol volume watch (pid {watch.proc.pid})" in lines[0]
    # The first one still answers.
    status = json.loads(ok(store, "volume", "status", str(copy), "--json"))
    assert status["watched_by"] == watch.proc.pid


def test_a_read_only_copy_and_a_bad_interval_are_refused(
    store: str, copy: Path, tmp_path: Path
) -> None:
    readonly = tmp_path / "ro"
    ok(store, "volume", "mount", "data", str(readonly), "--read-only")
    refused = run(store, "volume", "watch", str(readonly))
    assert refused.returncode == 2
    assert "read-only working copy" in refused.stderr.decode()
    assert not (readonly / SOCKET).exists()

    for bad in ("0", "-1", "soon"):
        result = run(store, "volume", "watch", str(copy), "--interval", bad)
        assert result.returncode == 2, (bad, result.stderr)
    assert not (copy / SOCKET).exists()


def test_watch_outside_a_working_copy_is_not_found(store: str, tmp_path: Path) -> None:
    result = run(store, "volume", "watch", str(tmp_path))
    assert result.returncode == 3
    assert "not inside a kvol working copy" in result.stderr.decode()


def test_a_copy_another_process_serves_is_not_taken_over(store: str, copy: Path) -> None:
    """A socket something else answers on (not a watcher: it would hold the lock) is
    left alone: replacing it would cut that process off from its clients."""
    from kvol.control import ControlServer

    class Other:
        def commit(self, message: str | None = None) -> dict[str, object]:
            return {"seq": None}

        def reload(self) -> dict[str, object]:
            return {}

        def status(self) -> dict[str, object]:
            return {"served_by": "other"}

    server = ControlServer(copy / SOCKET, Other(), socket_mode=0o600)
    server.start()
    try:
        refused = run(store, "volume", "watch", str(copy))
        assert refused.returncode == 4
        assert "served by another process" in refused.stderr.decode()
        status = json.loads(ok(store, "volume", "status", str(copy), "--json"))
        assert status["served_by"] == "other"
    finally:
        server.stop()
