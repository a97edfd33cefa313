"""The control socket inside every mount: commit, reload and status over HTTP.

A pod reaches its working copy's owner (this plugin) through ``.kvol/control.sock`` at the
root of its mount, in any language (``curl --unix-socket``). The protocol:

``GET /status``
    ``200`` with ``{"volume", "namespace", "volume_id", "base_seq", "changed", "deleted",
    "uncommitted_bytes", "read_only", "autocommit_seconds", "published_at"}``.
``POST /commit`` (optional JSON body ``{"message": "..."}``)
    ``200`` with ``{"seq", "files", "bytes"}``; ``seq`` is null when nothing changed.
``POST /reload``
    ``200`` with ``{"from_seq", "to_seq", "files"}``.

Failures answer with an HTTP status from one table (:data:`HTTP_STATUS`) and a body
``{"error": <kvol error class>, "message": ..., "retryable": bool}``; a busy reload adds
``"holders": [{"pid", "command", "path"}]``.

The socket file itself lives in the plugin's state directory and its directory is bind
mounted at ``<mount>/.kvol``, so socket paths stay under the kernel's 108-byte limit and
nothing of it is ever part of the volume's data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socketserver
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Protocol

from kvol import errors

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
#: Largest request body accepted (a commit message).
MAX_BODY = 64 * 1024

#: kvol error -> HTTP status. Most specific first: the first matching class wins.
HTTP_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (errors.ReadOnly, 403),
    (errors.VolumeBusy, 409),
    (errors.Conflict, 409),
    (errors.LimitExceeded, 413),
    (errors.NotFound, 404),
    (errors.InvalidArgument, 400),
    (errors.StoreUnavailable, 503),
    (errors.KvolError, 500),
)


class ControlTarget(Protocol):
    """What the socket controls: one published working copy."""

    def commit(self, message: str | None = None) -> dict[str, Any]: ...

    def reload(self) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...


def http_status(exc: BaseException) -> int:
    for cls, status in HTTP_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(exc: BaseException) -> dict[str, Any]:
    body: dict[str, Any] = {
        "error": type(exc).__name__,
        "message": str(exc),
        "retryable": bool(getattr(exc, "retryable", False)),
    }
    if isinstance(exc, errors.VolumeBusy):
        body["holders"] = [
            {"pid": pid, "command": command, "path": path} for pid, command, path in exc.holders
        ]
    return body


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A path naming ``path`` that fits a unix socket address, however deep ``path`` is.

    ``sun_path`` holds 107 bytes; kubelet target paths are longer. Through an open
    directory descriptor, ``/proc/self/fd/<n>/<name>`` names the same file briefly.
    """
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{dir_fd}/{path.name}"
    finally:
        os.close(dir_fd)


class _Handler(BaseHTTPRequestHandler):
    server: _UnixHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "kvol-control"

    def address_string(self) -> str:  # unix sockets have no peer address
        return "pod"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control %s: " + format, self.server.label, *args)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/status":
            self._answer(self.server.target.status)
        else:
            self._send(404, {"error": "NotFound", "message": f"no such endpoint {self.path}"})

    def do_POST(self) -> None:
        body = self._read_body()
        if body is None:
            return
        route = self.path.rstrip("/")
        if route == "/commit":
            message = body.get("message")
            if message is not None and not isinstance(message, str):
                self._send(400, {"error": "InvalidArgument", "message": "message must be text"})
                return
            self._answer(lambda: self.server.target.commit(message))
        elif route == "/reload":
            self._answer(self.server.target.reload)
        else:
            self._send(404, {"error": "NotFound", "message": f"no such endpoint {self.path}"})

    def _read_body(self) -> dict[str, Any] | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self._send(400, {"error": "InvalidArgument", "message": "bad Content-Length"})
            return None
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self._send(400, {"error": "InvalidArgument", "message": "body must be a JSON object"})
            return None
        return data

    def _answer(self, action: Callable[[], dict[str, Any]]) -> None:
        try:
            result = action()
        except Exception as exc:
            status = http_status(exc)
            if status >= 500 and not isinstance(exc, errors.KvolError):
                log.exception(
                    "control %s: %s %s failed", self.server.label, self.command, self.path
                )
            else:
                log.info("control %s: %s %s: %s", self.server.label, self.command, self.path, exc)
            self._send(status, error_body(exc))
            return
        self._send(200, result)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, sort_keys=True).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: Path, target: ControlTarget, label: str) -> None:
        self.path = path
        self.target = target
        self.label = label
        super().__init__(str(path), _Handler, bind_and_activate=True)

    def server_bind(self) -> None:
        with _short_path(self.path) as address:
            self.socket.bind(address)


class ControlServer:
    """Serves one working copy's control socket from a background thread."""

    def __init__(self, socket_path: str | Path, target: ControlTarget, label: str = "") -> None:
        self.path = Path(socket_path)
        self.target = target
        self.label = label or str(self.path)
        self._server: _UnixHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A socket file left by an earlier plugin process answers nobody: replace it.
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()
        self._server = _UnixHTTPServer(self.path, self.target, self.label)
        os.chmod(self.path, 0o666)  # containers may run as any user
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name=f"kvol-control-{self.label}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @property
    def running(self) -> bool:
        return self._server is not None
