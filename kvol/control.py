"""The control socket of a working copy: commit, reload and status over HTTP.

Whatever process owns a copy answers on its ``.kvol/control.sock``: the node plugin for
every pod's mount (a pod reaches it at the root of its mount, in any language, e.g.
``curl --unix-socket``), and ``kvol volume watch`` for a local copy (kvol.watching).
kvol.mounted is the client. The protocol:

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

One pod must not be able to starve the plugin that serves every pod of the node: each
pod holds at most :data:`MAX_CONNECTIONS` connections over all its mounts' sockets (the
node plugin gives the sockets of one pod one bound) and the process
:data:`MAX_CONNECTIONS_TOTAL`; a connection past either bound is answered ``503``
(``"error": "Overloaded"``, retryable) and closed. A request (line, headers and body) must
arrive whole within :data:`REQUEST_TIMEOUT` seconds of connecting, or the connection is
closed; every connection serves one request. Each connection has a thread of its own, so
a long commit never holds up accepting the next one.

For a pod, the socket file lives in the plugin's state directory and its directory is
bind mounted at ``<mount>/.kvol``, so nothing of it is ever part of the volume's data; a
path past the kernel's 108-byte limit for socket addresses is reached through
``/proc/self/fd``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Protocol

from kvol import errors

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
#: Largest request body accepted (a commit message).
MAX_BODY = 64 * 1024
#: Connections one pod may hold at once, over the control sockets of all its mounts.
MAX_CONNECTIONS = 8
#: Connections all control sockets of this process may hold at once.
MAX_CONNECTIONS_TOTAL = 128
#: Seconds a client has, from connecting, to send its whole request.
REQUEST_TIMEOUT = 10.0
#: Seconds a client has to take an answer (they are small: only a stalled reader waits).
SEND_TIMEOUT = 10.0

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


class ConnectionBudget:
    """A bound on connections open at once, shared by the sockets it is given to."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise errors.InvalidArgument(f"a connection bound must be positive, not {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        self._used = 0

    def take(self) -> bool:
        with self._lock:
            if self._used >= self.limit:
                return False
            self._used += 1
            return True

    def give(self) -> None:
        with self._lock:
            self._used -= 1

    @property
    def used(self) -> int:
        with self._lock:
            return self._used


#: The bound of :data:`MAX_CONNECTIONS_TOTAL`, shared by every socket of this process.
PROCESS_BUDGET = ConnectionBudget(MAX_CONNECTIONS_TOTAL)

_OVERLOADED = json.dumps(
    {
        "error": "Overloaded",
        "message": "too many connections to the kvol control socket; retry shortly",
        "retryable": True,
    },
    sort_keys=True,
).encode()
_OVERLOADED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_OVERLOADED) + 1).encode() + b"\r\n\r\n" + _OVERLOADED + b"\n"
)


class _DeadlineReader(io.RawIOBase):
    """Reads a socket until a deadline for all reads together, not per read: a client
    trickling a byte at a time is cut off as surely as a silent one."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


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

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # replaced by one that reads against the request's deadline
        deadline = time.monotonic() + self.server.request_timeout
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

    def handle(self) -> None:
        try:
            self.handle_one_request()  # one request per connection: none lingers idle
        except OSError as exc:  # timed out, or the client went away
            log.debug("control %s: connection dropped: %s", self.server.label, exc)
        self.close_connection = True

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
        try:
            raw = self.rfile.read(length) if length else b""
        except OSError as exc:
            log.debug("control %s: request body not read: %s", self.server.label, exc)
            self.close_connection = True
            return None
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
        if not self.server.begin_action():
            # The socket is closing (the volume is being unpublished): act on nothing.
            self._send(
                503,
                {
                    "error": "Closing",
                    "message": "the volume is being unpublished",
                    "retryable": False,
                },
            )
            return
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
        finally:
            self.server.end_action()
        self._send(200, result)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, sort_keys=True).encode() + b"\n"
        self.connection.settimeout(SEND_TIMEOUT)
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        path: Path,
        target: ControlTarget,
        label: str,
        *,
        own: ConnectionBudget,
        budget: ConnectionBudget,
        request_timeout: float,
        socket_mode: int,
    ) -> None:
        self.path = path
        self.socket_mode = socket_mode
        self.target = target
        self.label = label
        self.own = own
        self.budget = budget
        self.request_timeout = request_timeout
        self._actions = threading.Condition()
        self._running_actions = 0
        self._closing = False
        super().__init__(str(path), _Handler, bind_and_activate=True)

    def server_bind(self) -> None:
        # The file bind makes takes the socket's own mode (less the umask): set before,
        # no one else may connect in between.
        os.fchmod(self.socket.fileno(), self.socket_mode)
        with _short_path(self.path) as address:
            self.socket.bind(address)

    # -- bounds: checked in the accepting thread, before a thread is started ---------------

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.own.take():
            self._refuse(request)
            return
        if not self.budget.take():
            self.own.give()
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        self.budget.give()
        self.own.give()

    def _refuse(self, request: socket.socket) -> None:
        log.warning("control %s: too many connections, refused one", self.label)
        try:
            # A fresh socket's send buffer takes these few bytes at once; never wait.
            request.setblocking(False)
            request.send(_OVERLOADED_RESPONSE)
        except OSError:
            pass
        self.shutdown_request(request)

    # -- actions: none starts once the socket is closing, and closing waits for them ------

    def begin_action(self) -> bool:
        with self._actions:
            if self._closing:
                return False
            self._running_actions += 1
            return True

    def end_action(self) -> None:
        with self._actions:
            self._running_actions -= 1
            self._actions.notify_all()

    def close_actions(self) -> None:
        with self._actions:
            self._closing = True
            while self._running_actions:
                self._actions.wait()


class ControlServer:
    """Serves one working copy's control socket from a background thread."""

    def __init__(
        self,
        socket_path: str | Path,
        target: ControlTarget,
        label: str = "",
        *,
        max_connections: int = MAX_CONNECTIONS,
        budget: ConnectionBudget = PROCESS_BUDGET,
        request_timeout: float | None = None,
        client_budget: ConnectionBudget | None = None,
        socket_mode: int = 0o666,
    ) -> None:
        self.path = Path(socket_path)
        self.target = target
        self.label = label or str(self.path)
        #: The bound of the client behind this socket: its own (``max_connections``), or
        #: one shared by every socket of one pod, so that a pod with many mounts holds no
        #: more than a pod with one.
        self.client_budget = client_budget or ConnectionBudget(max_connections)
        self.budget = budget
        self.request_timeout = request_timeout
        #: Who may connect: in a pod, any user (containers run as any); a local
        #: watcher's socket, its own user only.
        self.socket_mode = socket_mode
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
        self._server = _UnixHTTPServer(
            self.path,
            self.target,
            self.label,
            own=self.client_budget,
            budget=self.budget,
            request_timeout=REQUEST_TIMEOUT
            if self.request_timeout is None
            else self.request_timeout,
            socket_mode=self.socket_mode,
        )
        os.chmod(self.path, self.socket_mode)  # the bits the umask took
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
        # A request accepted before the socket closed must not act on the copy after
        # this returns (the caller may be about to make the final commit and remove it).
        server.close_actions()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @property
    def running(self) -> bool:
        return self._server is not None
