"""Writers of one volume on one machine take turns at its log: an optimization only.

Writers that publish at the same instant race for the same log position: each time one
wins, every other pays a failed conditional write and a listing, so n writers at once
cost O(n²) store requests, each a round trip to the store. Writers on one machine (the
pods a node plugin serves, CLI processes, threads of one program) take turns instead,
through an advisory lock per volume and store held only while a writer finds its
position and writes its entry: only one writer per machine contends with the others.

Nothing relies on the lock. ``put_if_absent`` stays the only atomic step, so writers on
other machines, a lock that cannot be made here (no writable directory, another user's
directory in the way), and a writer that waited longer than ``MAX_WAIT_SECONDS`` (a
holder stuck on a slow store) all publish exactly as they would without it.

The lock files (one empty file per volume and store written from this machine) are
never removed: a file removed while another writer waits on it would let a third writer
take a new one beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

#: A writer waits at most this long for its turn, then publishes without one.
MAX_WAIT_SECONDS = 10.0
#: Set to "off" to publish without turns (tests of the race between writers use it).
SWITCH = "KVOL_PUBLISH_TURNS"


#: Lock descriptors open in this process. A child forked meanwhile (a data loader's
#: worker, say) would hold the lock for as long as it lives: it closes its copies.
_open: set[int] = set()


def _close(fd: int) -> None:
    _open.discard(fd)
    os.close(fd)


def _forget_in_child() -> None:
    for fd in list(_open):
        with contextlib.suppress(OSError):
            os.close(fd)
    _open.clear()


os.register_at_fork(after_in_child=_forget_in_child)


@contextlib.contextmanager
def turn(store_url: str, volume_id: str, wait_seconds: float = MAX_WAIT_SECONDS) -> Iterator[bool]:
    """Hold this machine's turn at the log of ``volume_id`` in ``store_url`` while the
    block runs; yields whether the turn was had (False: publish as without turns)."""
    fd = _open_lock(store_url, volume_id)
    if fd is None:
        yield False
        return
    owned, held = _take(fd, wait_seconds)
    try:
        yield held
    finally:
        if owned:
            _close(fd)  # lets the next writer go


def _open_lock(store_url: str, volume_id: str) -> int | None:
    if os.environ.get(SWITCH, "").lower() in ("off", "0", "false", "no"):
        return None
    directory = lock_dir()
    if directory is None:
        return None
    name = hashlib.sha256(f"{store_url}\0{volume_id}".encode()).hexdigest()[:32]
    try:
        fd = os.open(
            os.path.join(directory, f"{name}.lock"),
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
    except OSError:
        return None
    _open.add(fd)
    return fd


def lock_dir() -> str | None:
    """This user's directory of publish locks, made if missing: in ``$XDG_RUNTIME_DIR``
    when there is one, else in the user's cache directory, else (a read-only home, as in
    the node plugin's container) in the temporary directory. None where there is no
    directory of this user's alone (the lock is then skipped, never shared)."""
    for directory, mine in _candidates():
        if not os.path.isabs(directory):
            continue
        try:
            if not os.path.isdir(directory):  # no mutation once it is there
                os.makedirs(os.path.dirname(mine[0]), exist_ok=True)
                for path in mine:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(path, 0o700)
            if all(_owned(path) for path in mine):
                return directory
        except OSError:
            continue
        log.debug("publishing without turns from %s: not this user's alone", directory)
    return None


def _candidates() -> Iterator[tuple[str, list[str]]]:
    """Places for the locks, each with the directories that must be this user's alone."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        directory = os.path.join(runtime, "kvol", "publish-turns")
        yield directory, [directory]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = os.path.join(cache, "kvol", "publish-turns")
    yield directory, [directory]
    # A shared temporary directory (looked up only if needed: the first lookup writes a
    # probe file there): the user's own directory in it must be theirs too.
    own = os.path.join(tempfile.gettempdir(), f"kvol-{os.geteuid()}")
    yield os.path.join(own, "publish-turns"), [own, os.path.join(own, "publish-turns")]


def _owned(path: str) -> bool:
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _take(fd: int, wait_seconds: float) -> tuple[bool, bool]:
    """Lock ``fd``, waiting at most ``wait_seconds``: (whether the caller still owns the
    descriptor, whether it holds the lock)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True, True
    except BlockingIOError:
        pass
    except OSError:
        return True, False
    waiter = _Waiter(fd)
    threading.Thread(target=waiter.run, name="kvol-publish-turn", daemon=True).start()
    return waiter.wait(wait_seconds)


class _Waiter:
    """A blocking lock in a thread, so a waiting writer uses no CPU and gets its turn the
    moment the holder lets go, and the caller can still stop waiting. Once the caller
    has stopped waiting, the thread owns the descriptor and closes it when it gets the
    lock (or fails to)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._held = False
        self._abandoned = False

    def run(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            held = True
        except OSError:
            held = False
        with self._lock:
            if self._abandoned:
                _close(self._fd)
                return
            self._held = held
            self._done.set()

    def wait(self, seconds: float) -> tuple[bool, bool]:
        self._done.wait(seconds)
        with self._lock:
            if self._done.is_set():
                return True, self._held
            self._abandoned = True
        log.warning(
            "publishing without waiting for this machine's turn any longer (%.0f s): another "
            "writer of the volume here has held it that long",
            seconds,
        )
        return False, False
