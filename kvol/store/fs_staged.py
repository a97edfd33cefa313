"""Content a filesystem store holds back until the sync of the commit that uses it.

A commit's content is written to temporary files (their writeback started at once) and
gets its name only in :meth:`FilesystemStore.sync`, after its data is durable: a name in
the store never holds a file a power loss cut short, so reusing an object found there is
always safe. Until then the temporary stands for the object in this process (``head``,
reads, and the next commit's reuse).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Collection, Iterable
from pathlib import Path

from kvol import errors, fsops

#: An object staged this long ago whose commit never synced it is forgotten (its file
#: removed): an orphan of a commit that failed. Far longer than any commit can take, as
#: garbage collection removes temporaries past its grace anyway.
ABANDONED_AFTER_SECONDS = 86400.0


class StagedObjects:
    """Key -> the temporary file holding it, for objects written ``staged`` that no sync
    has named yet. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Key -> its file and when it was last staged or found (a commit that finds an
        #: object reuses it: it must not be forgotten before that commit's sync).
        self._files: dict[str, tuple[Path, float]] = {}
        self._closed = False

    def add(self, key: str, tmp: Path) -> Path | None:
        """Stage ``tmp`` as ``key``; returns the file it replaces, if any (written
        earlier, so older: the caller removes it)."""
        with self._lock:
            self._check_open()
            old = self._files.get(key)
            self._files[key] = (tmp, time.monotonic())
        return None if old is None else old[0]

    def file(self, key: str) -> Path | None:
        with self._lock:
            found = self._files.get(key)
            if found is not None:
                self._files[key] = (found[0], time.monotonic())
        return None if found is None else found[0]

    def forget(self, key: str, tmp: Path) -> None:
        """Drop ``key`` if it is still staged as ``tmp`` (found gone)."""
        with self._lock:
            if self._files.get(key, (None, 0.0))[0] == tmp:
                del self._files[key]

    def take(self, keys: Iterable[str]) -> list[tuple[str, Path]]:
        """Unstage ``keys`` that are staged, for the caller to name; abandoned ones go."""
        taken = []
        now = time.monotonic()
        with self._lock:
            self._check_open()
            for key in keys:
                found = self._files.pop(key, None)
                if found is not None:
                    taken.append((key, found[0]))
            abandoned = [
                key for key, (_, at) in self._files.items() if now - at > ABANDONED_AFTER_SECONDS
            ]
            gone = [self._files.pop(key)[0] for key in abandoned]
        for tmp in gone:
            tmp.unlink(missing_ok=True)
        return taken

    def close(self) -> None:
        """Remove every staged file: what no sync named by now is an orphan of a commit
        that failed. Staging or syncing afterwards fails, as a sync could not name what
        was removed."""
        with self._lock:
            self._closed = True
            files = [tmp for tmp, _ in self._files.values()]
            self._files.clear()
        for tmp in files:
            tmp.unlink(missing_ok=True)

    def _check_open(self) -> None:
        if self._closed:
            raise errors.StoreError("the filesystem store was closed: its staged content is gone")

    def give_back(self, taken: Iterable[tuple[str, Path]]) -> None:
        """Stage again what a failed sync took and did not name."""
        redundant = []
        with self._lock:
            for key, tmp in taken:
                if self._closed or key in self._files:
                    redundant.append(tmp)  # staged again meanwhile, or the store closed
                else:
                    self._files[key] = (tmp, time.monotonic())
        for tmp in redundant:
            tmp.unlink(missing_ok=True)


def name_durably(
    root: Path, staged: list[tuple[str, Path, Path]], dirs: Collection[Path], *, many: bool
) -> None:
    """Name each staged file, ``(key, temporary, name)``, once its data is durable, and
    make ``dirs`` (those of every object a commit refers to, whoever named it) durable with
    the new names and any directory made for them. Each file and directory on its own, or
    with ``many``, the whole filesystem of ``root`` (``syncfs``) before and after naming:
    per path, nothing else written to that filesystem is waited for."""
    if many:
        fsops.sync_filesystem(root)
    else:
        for key, tmp, _ in staged:
            _sync_data(key, tmp)
    changed = set(dirs)
    for key, tmp, target in staged:
        changed.update(make_dirs(target.parent))
        try:
            os.replace(tmp, target)
        except FileNotFoundError:
            if not tmp.exists():
                raise _collected(key) from None
            raise
    if many:
        fsops.sync_filesystem(root)
    else:
        fsync_dirs(sorted(changed, key=lambda d: -len(d.parts)))


def _sync_data(key: str, tmp: Path) -> None:
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _collected(key) from None
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _collected(key: str) -> errors.Conflict:
    # Collection removes temporaries past its grace, as it does unreferenced objects.
    return errors.Conflict(
        f"content {key} was collected before the commit that uses it could publish it; "
        "nothing was published: commit again"
    )


def make_dirs(directory: Path) -> list[Path]:
    """Make ``directory`` and whatever is missing above it; returns the directories that
    got a new name from that, each of which holds it durably only once synced."""
    try:
        directory.mkdir()
    except FileExistsError:
        return []
    except FileNotFoundError:
        changed = make_dirs(directory.parent)
        try:
            directory.mkdir()
        except FileExistsError:
            return changed
        return [*changed, directory.parent]
    return [directory.parent]


def fsync_dirs(directories: Iterable[Path]) -> None:
    for directory in directories:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
