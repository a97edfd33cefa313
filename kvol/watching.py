"""Watching a local working copy: for a directory made by ``kvol volume mount``, what the
node plugin does for a pod's mount.

One process holds the copy open: it finds changes from inotify events (kvol.tracker)
instead of a stat of every file, commits them every interval and once more when it
stops, and answers the copy's control socket (``.kvol/control.sock``, the protocol of
kvol.control). ``kvol volume commit``, ``reload`` and ``status`` in the copy, and the
SDK's ``kvol.commit()``, find the socket (kvol.mounted) and ask this process, so a commit
of one file in a large copy costs what the changed files cost, not a stat of every file.
When the watcher is gone (killed), its socket answers nobody and they act on the copy
themselves, as without one.

Only one watcher holds a copy at a time (``.kvol/watch.lock``). Others may still commit
or reload the copy directly: every operation takes the copy's own lock, and a watcher
reads the index again when another process changed it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kvol import mounted, paths
from kvol.copybase import CommitResult
from kvol.errors import AlreadyExists, InvalidArgument, KvolError
from kvol.workcopy import WorkingCopy

log = logging.getLogger(__name__)

LOCK_NAME = "watch.lock"
#: Seconds between commits when none is given: the node plugin's default.
DEFAULT_INTERVAL = 5.0

#: Told of every commit that published something: its result and who asked for it
#: (``"interval"``, ``"control socket"`` or ``"final"``).
CommitReport = Callable[[CommitResult, str], None]


class _Target:
    """What the control socket acts on: the watched copy."""

    def __init__(self, copy: WorkingCopy, interval: float, report: CommitReport) -> None:
        self.copy = copy
        self.interval = interval
        self.report = report

    def commit(self, message: str | None = None) -> dict[str, Any]:
        result = self.copy.commit(message)
        self.report(result, "control socket")
        return dataclasses.asdict(result)

    def reload(self) -> dict[str, Any]:
        return dataclasses.asdict(self.copy.reload())

    def status(self) -> dict[str, Any]:
        return mounted.local_status(self.copy) | {
            "autocommit_seconds": self.interval,
            "watched_by": os.getpid(),
        }


@contextlib.contextmanager
def _held(meta_dir: Path) -> Iterator[None]:
    """The copy's watch lock, for as long as this process watches it; the lock file
    names the holder's pid, for the message another watcher gets."""
    fd = os.open(meta_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise AlreadyExists(
                f"{meta_dir.parent} is already watched by another kvol volume watch "
                f"(pid {holder}): stop that one first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


class Watcher:
    """Holds a working copy open, commits it every ``interval`` seconds and serves its
    control socket until :meth:`stop`; then makes the final commit."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        interval: float = DEFAULT_INTERVAL,
        *,
        report: CommitReport | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        if not interval > 0:
            raise InvalidArgument(
                f"the interval must be a positive number of seconds, not {interval}"
            )
        self.root = Path(root).absolute()
        self.interval = interval
        self.report: CommitReport = report or (lambda result, why: None)
        self.on_ready = on_ready or (lambda: None)
        self._stop = threading.Event()
        #: Whether changes are found from events (False: every commit stats every file).
        self.tracking = False

    def stop(self) -> None:
        """Ask :meth:`run` to make the final commit and return (any thread, a signal)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> CommitResult | None:
        """Watch until :meth:`stop`; returns the final commit's result. If the final
        commit fails its error is raised, and every change is still in the copy."""
        from kvol.control import ControlServer

        # Held before the copy is opened: a second watcher must not touch it at all.
        meta_dir = self.root / paths.RESERVED
        with _held(meta_dir):
            if mounted.answers(meta_dir / mounted.SOCKET_NAME):
                # Not another watcher (it would hold the lock): the node plugin's copy.
                raise AlreadyExists(
                    f"{self.root} is served by another process (its control socket answers)"
                )
            copy = WorkingCopy.open(self.root)
            if copy.read_only:
                copy.close(final_commit=False)
                raise InvalidArgument(
                    f"{self.root} is a read-only working copy: it has nothing to commit"
                )
            server = ControlServer(
                copy.meta_dir / mounted.SOCKET_NAME,
                _Target(copy, self.interval, self.report),
                f"watch {self.root}",
                socket_mode=0o600,  # only this user commits and reloads the copy
            )
            finished = False
            try:
                self.tracking = copy.track_changes()
                server.start()
                self.on_ready()
                while not self._stop.wait(self.interval):
                    self._commit_now(copy)
                # Requests already taken finish first; none starts after this.
                server.stop()
                finished = True
                result = copy.close(final_commit=True)
                if result is not None:
                    self.report(result, "final")
                return result
            finally:
                server.stop()
                if not finished:
                    # Interrupted (a second Ctrl-C): the changes stay for the next commit.
                    copy.close(final_commit=False)

    def _commit_now(self, copy: WorkingCopy) -> None:
        try:
            result = copy.commit()
        except (KvolError, OSError) as exc:
            # The changes stay in the copy: the next interval or the final commit retries.
            log.warning("commit of %s failed (will retry): %s", self.root, exc)
            return
        self.report(result, "interval")
