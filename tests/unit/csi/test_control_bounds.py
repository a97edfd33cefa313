"""The control socket's bounds: one pod cannot starve the plugin that serves every pod.

Real unix sockets and real server threads; the working copy behind them is a stand-in.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvol import control, errors
from kvol.control import SOCKET_NAME, ControlServer
from kvol.mounted import ControlMount


class Target:
    def __init__(self) -> None:
        self.commits = 0
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def commit(self, message: str | None = None) -> dict[str, Any]:
        self.started.set()
        assert self.release.wait(30)
        self.commits += 1
        return {"seq": self.commits, "files": 1, "bytes": 1}

    def reload(self) -> dict[str, Any]:
        return {"from_seq": 0, "to_seq": 0, "files": 0}

    def status(self) -> dict[str, Any]:
        return {"base_seq": self.commits}


@contextlib.contextmanager
def serve(root: Path, target: Target) -> Iterator[ControlServer]:
    server = ControlServer(root / ".kvol" / SOCKET_NAME, target, label=root.name)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def connect(root: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dir_fd = os.open(root / ".kvol", os.O_PATH | os.O_DIRECTORY)
    try:
        sock.connect(f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
    finally:
        os.close(dir_fd)
    return sock


def closed_by_server(sock: socket.socket, within: float) -> tuple[bool, bytes]:
    """Whether the server closed the connection within ``within`` seconds, and what it
    sent before closing."""
    within = max(within, 0.01)
    sock.settimeout(within)
    received = b""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                return True, received
            received += chunk
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        return True, received
    return False, received


def test_one_pods_idle_connections_cannot_stop_another_pods_commit(tmp_path: Path) -> None:
    noisy_target, quiet_target = Target(), Target()
    noisy, quiet = tmp_path / "noisy", tmp_path / "quiet"
    with serve(noisy, noisy_target), serve(quiet, quiet_target):
        hogs = [connect(noisy) for _ in range(200)]
        try:
            started = time.monotonic()
            assert ControlMount(quiet).commit("mine")["seq"] == 1
            assert time.monotonic() - started < 5
            # Past its bound, the noisy pod's connections are answered 503 and closed
            # at once instead of each holding a thread of the plugin.
            refused = 0
            deadline = time.monotonic() + 5
            for sock in hogs[-100:]:
                closed, answer = closed_by_server(sock, within=deadline - time.monotonic())
                if closed and answer.startswith(b"HTTP/1.1 503"):
                    refused += 1
            assert refused == 100
            # Its own requests are refused while it holds its bound open, not queued.
            with pytest.raises(errors.KvolError) as overloaded:
                ControlMount(noisy).status()
            assert "too many connections" in str(overloaded.value)
        finally:
            for sock in hogs:
                sock.close()
        # Once the idle ones are gone, the noisy pod is served again.
        deadline = time.monotonic() + 10
        while True:
            try:
                assert ControlMount(noisy).status() == {"base_seq": 0}
                break
            except errors.KvolError:
                assert time.monotonic() < deadline
                time.sleep(0.05)


def test_idle_and_trickling_connections_are_closed_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "REQUEST_TIMEOUT", 1.0, raising=False)
    target = Target()
    with serve(tmp_path, target):
        idle = connect(tmp_path)
        trickle = connect(tmp_path)
        stop = threading.Event()

        def send_slowly() -> None:
            # A byte every 0.2 s: each read is quick, the request never completes.
            for byte in b"GET /status HTTP/1.1\r\nHost: x\r\n" * 10:
                if stop.wait(0.2):
                    return
                try:
                    trickle.send(bytes([byte]))
                except OSError:
                    return

        sender = threading.Thread(target=send_slowly, daemon=True)
        sender.start()
        try:
            started = time.monotonic()
            closed, answer = closed_by_server(idle, within=6)
            assert closed and answer == b""
            closed, answer = closed_by_server(trickle, within=6)
            assert closed and answer == b""
            assert time.monotonic() - started < 6
        finally:
            stop.set()
            sender.join()
            idle.close()
            trickle.close()
        assert ControlMount(tmp_path).status() == {"base_seq": 0}  # still serving


def test_a_long_commit_does_not_hold_up_other_requests(tmp_path: Path) -> None:
    target = Target()
    target.release.clear()
    with serve(tmp_path, target):
        results: list[dict[str, Any]] = []
        committer = threading.Thread(
            target=lambda: results.append(ControlMount(tmp_path).commit()), daemon=True
        )
        committer.start()
        assert target.started.wait(10)
        started = time.monotonic()
        assert ControlMount(tmp_path).status() == {"base_seq": 0}
        assert time.monotonic() - started < 5
        target.release.set()
        committer.join(10)
        assert results == [{"seq": 1, "files": 1, "bytes": 1}]


def test_a_request_accepted_before_stop_never_acts_after_it(tmp_path: Path) -> None:
    target = Target()
    server = ControlServer(tmp_path / ".kvol" / SOCKET_NAME, target)
    server.start()
    sock = connect(tmp_path)
    try:
        # The request is accepted, its body not yet sent, when the socket is stopped
        # (a volume being unpublished): it must not commit the copy afterwards.
        sock.sendall(b"POST /commit HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
        time.sleep(0.3)
        server.stop()
        sock.sendall(b"{}")
        closed_by_server(sock, within=3)
    finally:
        sock.close()
    time.sleep(0.3)
    assert target.commits == 0
