"""A fanotify pre-content group that outlives the process using it.

Reads and opens that wait on a pre-content mark are let through, holes and all, once the
group that holds the mark is closed (the kernel allows what a closed group had pending).
So the group is kept open by a small holder process as well: when its user dies, the
marks live on, and whatever waits keeps waiting for the next user, who takes the group
over from the holder (``pidfd_getfd``) and answers with EIO the events the dead one had
read and not answered. One user at a time per state directory (a lock file).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import resource
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from kvol import fsops
from kvol.errors import KvolError

log = logging.getLogger(__name__)

# fanotify ABI (linux/fanotify.h).
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_PRE_CONTENT = 0x8
FAN_UNLIMITED_QUEUE = 0x10
FAN_UNLIMITED_MARKS = 0x20
FAN_REPORT_TID = 0x100
FAN_MARK_ADD = 0x1
FAN_MARK_REMOVE = 0x2
FAN_OPEN_PERM = 0x10000
FAN_PRE_ACCESS = 0x100000
FAN_ALLOW = 0x1
FAN_DENY = 0x2
FAN_ERRNO_SHIFT = 24
AT_FDCWD = -100
RESPONSE = struct.Struct("iI")
DENY_EIO = FAN_DENY | (errno.EIO << FAN_ERRNO_SHIFT)
_EVENT = struct.Struct("IBBHQii")
_INFO_HEADER = struct.Struct("BBH")
_RANGE = struct.Struct("BBHIQQ")
_INFO_TYPE_RANGE = 6

#: In the state directory: who holds the group, and the lock of its one user.
HOLDER_FILE = "holder"
LOCK_FILE = "lock"
#: Descriptor numbers a successor answers orphaned events for, at most.
MAX_ORPHAN_FD = 1 << 16
SYS_PIDFD_GETFD = 438  # the same number on every architecture


class LazyUnavailable(KvolError):
    """Lazy fetching cannot work here (not root, an old kernel, or a filesystem without
    pre-content events)."""


_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        # This process's own symbols, libc's among them (no ldconfig run to find it).
        lib = ctypes.CDLL(None, use_errno=True)
        lib.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        lib.fanotify_init.restype = ctypes.c_int
        lib.fanotify_mark.argtypes = [
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.c_char_p,
        ]
        lib.fanotify_mark.restype = ctypes.c_int
        _libc = lib
    return _libc


def mark(group: int, flags: int, mask: int, fd: int, path: str | None = None) -> None:
    """Mark the inode open as ``fd`` (or at ``path``: an O_PATH descriptor must be named
    through /proc, the call wants a real open file)."""
    where = (AT_FDCWD, os.fsencode(path)) if path is not None else (fd, None)
    if libc().fanotify_mark(group, flags, mask, *where) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fanotify_mark: {os.strerror(err)}")


class HeldGroup:
    """The group of one state directory, new (with a holder) or taken over."""

    def __init__(self, state: Path, what: str) -> None:
        self.state = state
        self.what = what  # for the error naming who else uses it
        self.fd = -1
        #: Whether the group was taken over (marks and queued events came with it).
        self.adopted = False
        self._lock_fd = -1
        self._holder: subprocess.Popen[bytes] | None = None
        self._holder_pid: int | None = None

    def open(self, probe_mask: int) -> HeldGroup:
        """Take the group over from its holder or open a new one (checking first that
        the state directory's filesystem takes ``probe_mask`` marks) with a holder."""
        self.state.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(
            self.state / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise KvolError(f"another process fills {self.what}") from None
        try:
            adopted = self._adopt()
            if adopted is None:
                self.fd = self._new()
                self._probe(probe_mask)
                self._spawn_holder()
            else:
                self.fd, orphans = adopted
                self.adopted = True
                self._answer_orphans(orphans)
        except BaseException:
            self.close()
            raise
        return self

    def _new(self) -> int:
        flags = FAN_CLOEXEC | FAN_NONBLOCK | FAN_CLASS_PRE_CONTENT | FAN_UNLIMITED_QUEUE
        flags |= FAN_UNLIMITED_MARKS | FAN_REPORT_TID
        group = int(libc().fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC))
        if group < 0:
            err = ctypes.get_errno()
            raise LazyUnavailable(f"fanotify pre-content group: {os.strerror(err)}")
        return group

    def _spawn_holder(self) -> None:
        """A process that only keeps the group open."""
        sleep = shutil.which("sleep")
        cmd = (
            [sleep, "infinity"]
            if sleep
            else [sys.executable, "-c", "import signal; signal.pause()"]
        )
        self._holder = subprocess.Popen(
            cmd,
            pass_fds=(self.fd,),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        record = {
            "pid": self._holder.pid,
            "fd": self.fd,
            "start": start_time(self._holder.pid),
            # Event descriptors of this process are below its limit: a successor answers
            # the events this one read and left unanswered by their numbers.
            "max_fd": min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], MAX_ORPHAN_FD),
        }
        fsops.write_atomically(self.state / HOLDER_FILE, json.dumps(record).encode())

    def _adopt(self) -> tuple[int, int] | None:
        """The group a live holder keeps, and how many descriptor numbers its previous
        user may have used; None if there is no holder."""
        try:
            record = json.loads((self.state / HOLDER_FILE).read_bytes())
            pid, fd, start, max_fd = (int(record[k]) for k in ("pid", "fd", "start", "max_fd"))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        if start_time(pid) != start:
            return None  # the holder is gone (its group with it)
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[fanotify]":
                return None
            pidfd = os.pidfd_open(pid)
        except OSError:
            return None
        try:
            group = int(libc().syscall(SYS_PIDFD_GETFD, pidfd, fd, 0))
        finally:
            os.close(pidfd)
        if group < 0:
            return None
        self._holder_pid = pid
        return group, max_fd

    def _answer_orphans(self, max_fd: int) -> None:
        """Events the dead user read but never answered fail with EIO (never holes); the
        next access is served as usual. The kernel matches a response by the event's
        descriptor number in the reader's process."""
        for fd in range(max_fd):
            with contextlib.suppress(OSError):  # ENOENT: no event had that number
                os.write(self.fd, RESPONSE.pack(fd, DENY_EIO))

    def _probe(self, probe_mask: int) -> None:
        # A filesystem without pre-content events refuses the mark: fail now, not later.
        probe = self.state / f"{fsops.TEMP_PREFIX}probe-{secrets.token_hex(4)}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                mark(self.fd, FAN_MARK_ADD, probe_mask, fd)
            except OSError as exc:
                raise LazyUnavailable(
                    f"no pre-content events on the filesystem of {self.state}: {exc.strerror}"
                ) from exc
            mark(self.fd, FAN_MARK_REMOVE, probe_mask, fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)

    def release(self) -> None:
        """End the holder, and with it the group once this process closes it."""
        if self._holder is not None:
            self._holder.kill()
            self._holder.wait()
        elif self._holder_pid is not None and start_time(self._holder_pid) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._holder_pid, signal.SIGKILL)
        self._holder = None
        self._holder_pid = None
        (self.state / HOLDER_FILE).unlink(missing_ok=True)

    def close(self) -> None:
        for fd in (self.fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self._lock_fd = -1


#: What an event handler is told: the event's descriptor, the reader's thread id, and
#: the range the reader is about to read (pre-access events) if the kernel said.
EventHandler = Callable[[int, int, "tuple[int, int] | None"], None]


def respond(group: int, fd: int, ok: bool) -> None:
    """Let the access held by the event ``fd`` go on, or fail it with EIO; closes ``fd``."""
    try:
        os.write(group, RESPONSE.pack(fd, FAN_ALLOW if ok else DENY_EIO))
    except OSError as exc:
        log.error("fanotify response failed: %s", exc)
    finally:
        os.close(fd)


def listen(group: int, stop: int, handle: EventHandler) -> None:
    """Read the group's events and hand each to ``handle`` until ``stop`` is readable."""
    poller = select.poll()
    poller.register(group, select.POLLIN)
    poller.register(stop, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if stop in ready:
            return
        try:
            buf = os.read(group, 64 * 1024)
        except BlockingIOError:
            continue
        at = 0
        while at + _EVENT.size <= len(buf):
            length, _, _, meta_len, _, fd, tid = _EVENT.unpack_from(buf, at)
            if fd >= 0:
                handle(fd, tid, _range_of(buf, at + meta_len, at + length))
            at += length


def _range_of(buf: bytes, at: int, end: int) -> tuple[int, int] | None:
    while at + _INFO_HEADER.size <= end:
        kind, _, length = _INFO_HEADER.unpack_from(buf, at)
        if length == 0:
            break
        if kind == _INFO_TYPE_RANGE:
            _, _, _, _, offset, count = _RANGE.unpack_from(buf, at)
            return offset, count
        at += length
    return None


def start_time(pid: int) -> int | None:
    """A process's start time (clock ticks since boot): tells it from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None  # a zombie holds no descriptors
    return int(fields[19])
