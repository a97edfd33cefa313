"""Finding the mounted working copy of a volume, so ``commit()`` and ``reload()`` reach it.

A process can sit inside two kinds of mount:

* a CSI mount in a pod: ``<mount>/.kvol/control.sock`` answers HTTP (``GET /status``,
  ``POST /commit``, ``POST /reload``, JSON bodies) for the plugin that owns the copy;
* a local working copy made by ``kvol volume mount NAME DIR``: ``DIR/.kvol/config.json``;
  this process opens it and commits or reloads it itself, unless ``kvol volume watch``
  holds it: then its ``.kvol/control.sock`` answers the same protocol (kvol.watching),
  and when nobody answers there (the watcher was killed) the copy is opened directly.

Where to look is explicit, in this order: the directories named in ``$KVOL_MOUNTS`` (a
JSON object, volume name -> mount path); the current directory and each of its
ancestors; then every mount point of this process (``/proc/self/mountinfo``) that holds a
control socket, which is how a pod finds ``/data`` without being told. The first mount
that belongs to the volume (same name, or same volume id) is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvol import errors
from kvol.paths import RESERVED

if TYPE_CHECKING:
    import socket

    from kvol.workcopy import WorkingCopy

log = logging.getLogger(__name__)

MOUNTS_ENV = "KVOL_MOUNTS"
SOCKET_NAME = "control.sock"
CONFIG_NAME = "config.json"
#: A commit of a large change can take a while; the plugin answers when it is done.
CONTROL_TIMEOUT = 3600.0
#: Waits before asking again when the plugin is at its bound of connections (``503``,
#: ``"error": "Overloaded"``): other processes of the pod hold them, briefly.
OVERLOADED_RETRY_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.6)


class Mount:
    """A working copy this process can commit and reload. Results are plain dicts:
    commit ``{seq, files, bytes}``, reload ``{from_seq, to_seq, files}``, status
    ``{volume_id, base_seq, changed, deleted, uncommitted_bytes, ...}``."""

    root: Path

    def commit(self, message: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def reload(self) -> dict[str, Any]:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class _NobodyAnswers(Exception):
    """The control socket is a leftover: nothing listens on it."""


@dataclass
class ControlMount(Mount):
    """A CSI mount, or a watched local copy: the process that owns the copy is asked
    over the control socket."""

    root: Path
    #: A local working copy (``kvol volume mount``) served by a watcher: when nothing
    #: listens on the socket, the copy is opened here instead.
    local: bool = False

    @property
    def socket_path(self) -> Path:
        return self.root / RESERVED / SOCKET_NAME

    def describe(self) -> str:
        return f"the kvol mount at {self.root}"

    def status(self) -> dict[str, Any]:
        return self._request("GET", "/status", None, LocalMount.status)

    def commit(self, message: str | None = None) -> dict[str, Any]:
        return self._request(
            "POST",
            "/commit",
            {"message": message} if message else None,
            lambda local: local.commit(message),
        )

    def reload(self) -> dict[str, Any]:
        return self._request("POST", "/reload", None, LocalMount.reload)

    def _request(
        self,
        method: str,
        route: str,
        body: dict[str, Any] | None,
        locally: Callable[[LocalMount], dict[str, Any]],
    ) -> dict[str, Any]:
        try:
            return self._ask(method, route, body)
        except _NobodyAnswers as exc:
            if not self.local:
                raise errors.StoreUnavailable(
                    f"the control socket {self.socket_path} did not answer: {exc.__cause__}"
                ) from exc
            log.debug("nobody answers %s: acting on the copy here", self.socket_path)
            return locally(LocalMount(self.root))

    def _ask(self, method: str, route: str, body: dict[str, Any] | None) -> dict[str, Any]:
        for delay in OVERLOADED_RETRY_DELAYS:
            status, data = self._exchange(method, route, body)
            if not (status == 503 and isinstance(data, dict) and data.get("error") == "Overloaded"):
                break
            time.sleep(delay)
        else:
            status, data = self._exchange(method, route, body)
        if status != 200:
            raise _error_from(status, data)
        if not isinstance(data, dict):
            raise errors.CorruptData(
                "the control socket answered with a body that is not an object"
            )
        return data

    def _exchange(self, method: str, route: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        payload = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {route} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        try:
            sock = _connect(self.socket_path, CONTROL_TIMEOUT)
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            # Only connecting fails so: the socket file outlived its server.
            raise _NobodyAnswers() from exc
        except OSError as exc:
            raise errors.StoreUnavailable(
                f"the control socket {self.socket_path} did not answer: {exc}"
            ) from exc
        try:
            # Refused before the request was read (a broken pipe): its answer is here.
            with contextlib.suppress(BrokenPipeError):
                sock.sendall(head.encode() + payload)
            answer = _read_answer(sock)
        except OSError as exc:
            raise errors.StoreUnavailable(
                f"the control socket {self.socket_path} did not answer: {exc}"
            ) from exc
        finally:
            sock.close()
        status, raw = _parse_response(answer, self.socket_path)
        try:
            data = json.loads(raw or b"{}")
        except ValueError as exc:
            raise errors.CorruptData(
                f"the control socket answered {status} with a body that is not JSON"
            ) from exc
        return status, data


@dataclass
class LocalMount(Mount):
    """A working copy made by ``kvol volume mount``: we open it and act on it directly."""

    root: Path

    def describe(self) -> str:
        return f"the working copy at {self.root}"

    def _open(self) -> Any:
        from kvol.workcopy import WorkingCopy

        return WorkingCopy.open(self.root)

    def status(self) -> dict[str, Any]:
        return local_status(self._open())

    def commit(self, message: str | None = None) -> dict[str, Any]:
        return dataclasses.asdict(self._open().commit(message))

    def reload(self) -> dict[str, Any]:
        return dataclasses.asdict(self._open().reload())

    def volume_id(self) -> str | None:
        try:
            config = json.loads((self.root / RESERVED / CONFIG_NAME).read_text())
            return str(config["volume_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def local_status(wc: WorkingCopy) -> dict[str, Any]:
    """A local working copy's answer to a status request (the protocol's fields)."""
    from kvol.catalog import Catalog

    if not wc.repo.exists():
        raise errors.NotFound(
            f"volume {wc.repo.volume_id} of the working copy {wc.root} no longer exists "
            f"in {wc.repo.store.url} (its files are still in the copy)"
        )
    st = wc.status()
    names = [n for n, meta in Catalog(wc.repo.store).list() if meta.id == st.volume_id]
    return {
        "volume": names[0] if names else None,
        "volume_id": st.volume_id,
        "base_seq": st.base_seq,
        "head_seq": wc.repo.head(),
        "changed": list(st.changed),
        "deleted": list(st.deleted),
        "uncommitted_bytes": st.uncommitted_bytes,
        "read_only": wc.read_only,
    }


def at(directory: str | os.PathLike[str]) -> Mount | None:
    """The mount whose root is exactly ``directory``, if it is one."""
    root = Path(directory).absolute()
    meta = root / RESERVED
    local = (meta / CONFIG_NAME).is_file()
    try:
        if stat.S_ISSOCK(os.stat(meta / SOCKET_NAME).st_mode):
            return ControlMount(root, local=local)
    except OSError:
        pass
    return LocalMount(root) if local else None


def containing(directory: str | os.PathLike[str]) -> Mount | None:
    """The mount holding ``directory``: itself or its nearest ancestor that is a mount."""
    start = Path(directory).absolute()
    for candidate in (start, *start.parents):
        mount = at(candidate)
        if mount is not None:
            return mount
    return None


def configured() -> dict[str, Path]:
    """``$KVOL_MOUNTS`` parsed: volume name -> mount path."""
    raw = os.environ.get(MOUNTS_ENV)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise errors.InvalidArgument(
            f"${MOUNTS_ENV} must be a JSON object of volume name -> mount path"
        ) from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise errors.InvalidArgument(
            f"${MOUNTS_ENV} must be a JSON object of volume name -> mount path"
        )
    return {k: Path(v) for k, v in data.items()}


def find(name: str | None, volume_id: Callable[[], str | None]) -> Mount | None:
    """The mount of the volume called ``name`` (or with the id ``volume_id()`` returns).

    ``volume_id`` is only called when a local working copy must be matched by id, so a
    process inside a pod never needs the store to find its mount.
    """
    listed = configured()
    if name is not None and name in listed:
        mount = at(listed[name])
        if mount is None:
            raise errors.NotFound(
                f"${MOUNTS_ENV} names {listed[name]} for volume {name!r}, "
                "but no kvol mount is there"
            )
        return mount
    known_id: list[str | None] = []

    def the_id() -> str | None:
        if not known_id:
            known_id.append(volume_id())
        return known_id[0]

    for candidate in _candidates(listed):
        mount = at(candidate)
        if mount is not None and _belongs(mount, name, the_id):
            return mount
    return None


def _candidates(listed: dict[str, Path]) -> Iterator[Path]:
    seen: set[Path] = set()
    cwd = Path.cwd()
    for path in (*listed.values(), cwd, *cwd.parents, *mount_points()):
        if path not in seen:
            seen.add(path)
            yield path


def mount_points(mountinfo: str = "/proc/self/mountinfo") -> list[Path]:
    """Mount points of this process that hold a kvol control socket."""
    from kvol.mounting import unescape

    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.readlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        point = Path(unescape(fields[4]))
        try:
            if stat.S_ISSOCK(os.stat(point / RESERVED / SOCKET_NAME).st_mode):
                found.append(point)
        except OSError:
            continue
    return found


def _belongs(mount: Mount, name: str | None, volume_id: Callable[[], str | None]) -> bool:
    if isinstance(mount, ControlMount):
        try:
            status = mount.status()
        except errors.KvolError:
            return False
        if name is not None and status.get("volume") == name:
            return True
        return status.get("volume_id") is not None and status.get("volume_id") == volume_id()
    assert isinstance(mount, LocalMount)
    mine = mount.volume_id()
    return mine is not None and mine == volume_id()


def _error_from(status: int, body: Any) -> errors.KvolError:
    """Rebuild the kvol error the plugin reported, so callers catch the same classes."""
    body = body if isinstance(body, dict) else {}
    message = str(body.get("message") or f"control request failed with HTTP {status}")
    cls = getattr(errors, str(body.get("error", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.KvolError)):
        cls = errors.KvolError
    if cls is errors.VolumeBusy:
        holders = [
            (int(h.get("pid", 0)), str(h.get("command", "?")), str(h.get("path", "")))
            for h in body.get("holders", [])
            if isinstance(h, dict)
        ]
        return errors.VolumeBusy(message, holders)
    return cls(message)


def answers(path: Path) -> bool:
    """Does a server listen on the unix socket at ``path``?"""
    try:
        _connect(path, 5.0).close()
    except OSError:
        return False
    return True


def _connect(path: Path, timeout: float) -> socket.socket:
    """A connection to the unix socket at ``path``; a long path is reached through
    /proc/self/fd (an address holds 107 bytes; kubelet paths are often longer)."""
    import socket  # here: a command on a plain working copy never connects

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if len(os.fsencode(path)) < 100:
            sock.connect(str(path))
        else:
            dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
            try:
                sock.connect(f"/proc/self/fd/{dir_fd}/{path.name}")
            finally:
                os.close(dir_fd)
    except BaseException:
        sock.close()
        raise
    return sock


def _read_answer(sock: socket.socket) -> bytes:
    """The server's answer: up to the end of its body (it answers one request per
    connection, with a Content-Length, then closes). A server that refused the request
    unread closes with it unread, which resets the connection once the answer is read:
    the answer stands."""
    answer = b""
    while not _complete(answer):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            if answer:
                break
            raise
        if not chunk:
            break
        answer += chunk
    return answer


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    length = _content_length(head) if sep else None
    # No length: the body ends when the server closes.
    return length is not None and length.isdigit() and len(body) >= int(length)


def _content_length(head: bytes) -> bytes | None:
    """The Content-Length of a response's head (None: it has none)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return value.strip()
    return None


def _parse_response(answer: bytes, path: Path) -> tuple[int, bytes]:
    """The status and body of an HTTP/1.1 response with a Content-Length, as the control
    server always sends (a small client of our own: http.client and the email parser
    it loads would be most of a short command's start)."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    length = _content_length(head)
    try:
        if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ValueError("no status line")
        status = int(parts[1])
        if length is not None and (not length.isdigit() or int(length) != len(body)):
            raise ValueError(f"{len(body)} bytes of a body of {length.decode('latin-1')}")
    except ValueError as exc:
        raise errors.StoreUnavailable(
            f"the control socket {path} did not answer in HTTP: {exc}"
        ) from None
    return status, body
