"""Putting a lazy cache's placeholders (see :mod:`kvol.lazy`) under watch: new ones as a
snapshot is built, each marked before anybody can open it, and at start those a previous
process left unfilled, found by their manifests."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kvol import fsops
from kvol.lazy_entry import PLACEHOLDER_XATTR, Marks, entry_name, is_placeholder
from kvol.lazy_manifests import Manifests
from kvol.lazy_queue import BACKGROUND, FillJob, FillQueue
from kvol.model import FileRecord

log = logging.getLogger(__name__)


class Placer:
    """Makes the placeholders of one content cache and gives each a job in ``queue``."""

    def __init__(self, root: Path, queue: FillQueue, manifests: Manifests, marks: Marks) -> None:
        self.root = root
        self._queue = queue
        self._manifests = manifests
        self._marks = marks

    def place(
        self, volume_id: str, items: list[tuple[Path, Path, FileRecord]], concurrency: int
    ) -> list[Path]:
        """See :meth:`kvol.lazy.LazyFiller.place` (which claims the entries first)."""
        names: dict[Path, list[Path]] = {}
        records: dict[Path, FileRecord] = {}
        for name, entry, record in items:
            names.setdefault(entry, []).append(name)
            records.setdefault(entry, record)
        # What the cache has is linked (the caller holds those entries against eviction).
        todo = {e: r for e, r in records.items() if not os.path.lexists(e)}
        manifest = self._manifests.name()
        if todo:
            self._manifests.write(manifest, volume_id, todo.values())
        for directory in {str(e.parent) for e in todo}:
            os.makedirs(directory, exist_ok=True)
        work = list(records.items())
        # The system calls release the GIL: a few threads make a large tree faster, and
        # each takes a run of files, so that handing them out costs little.
        step = max(1, -(-len(work) // (concurrency * 8)))
        placed: list[Path] = []  # appended from the pool's threads (atomic)

        def run(start: int) -> None:
            for entry, record in work[start : start + step]:
                if entry not in todo:
                    for name in names[entry]:
                        os.link(entry, name)
                elif self._place_one(names[entry], entry, record, volume_id, manifest):
                    placed.append(entry)

        try:
            with ThreadPoolExecutor(concurrency, thread_name_prefix="kvol-lazy-place") as pool:
                for _ in pool.map(run, range(0, len(work), step)):
                    pass
        finally:
            if todo:
                self._manifests.release(manifest, len(todo) - len(placed))
        return placed

    def _place_one(
        self, names: list[Path], entry: Path, record: FileRecord, volume_id: str, manifest: Path
    ) -> bool:
        first, rest = names[0], names[1:]
        # Made and marked at a name nobody can see yet (inodes made side by side also
        # cost ext4 far less than inodes made across the cache's hashed directories):
        # nobody can open it unwatched.
        fd = os.open(first, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, record.size)
            os.setxattr(fd, PLACEHOLDER_XATTR, b"1")
            os.fchmod(fd, fsops.safe_mode(record.mode))
            os.utime(fd, ns=(record.mtime_ns, record.mtime_ns))
            self._marks.add(fd)
            st = os.fstat(fd)
            job = FillJob(entry, volume_id, record, (st.st_dev, st.st_ino), manifest)
            self._queue.add(job)
            try:
                # A link, never a rename: an entry that appeared meanwhile is never
                # replaced (snapshots may link its inode).
                os.link(first, entry)
            except FileExistsError:
                self._queue.withdraw(job)
                self._marks.remove(fd)
                os.unlink(first)
                for name in names:
                    os.link(entry, name)
                return False
        finally:
            os.close(fd)
        for name in rest:
            os.link(first, name)
        return True

    def resume(self) -> None:
        """Mark every placeholder the manifests name (a previous process left them), and
        queue their fills in the background."""
        unreadable = 0
        for manifest in self._manifests.left_behind():
            body = self._manifests.read(manifest)
            if body is None:
                unreadable += 1
                continue
            volume_id, records = body
            left = 0
            for record in records:
                path = self._entry_path(record)
                inode = self._watch(path)
                if inode is None:
                    continue
                self._queue.add(FillJob(path, volume_id, record, inode, manifest), BACKGROUND)
                left += 1
            if left:
                self._manifests.count(manifest, left)
            else:
                self._manifests.drop(manifest)
        if unreadable:
            self._mark_orphans()

    def _mark_orphans(self) -> None:
        """Mark the placeholders no manifest names (theirs was unreadable): nothing can
        fill them, and unmarked they would read as zeros. Their opens fail instead (see
        :meth:`kvol.lazy.LazyFiller._on_event`) until the cache evicts them."""
        orphans = 0
        for directory in self.root.glob("??"):
            if not directory.is_dir() or directory.is_symlink():
                continue  # not a directory of entries (the cache makes none such)
            for entry in directory.iterdir():
                if not self._queue.knows(entry) and self._watch(entry) is not None:
                    orphans += 1
        if orphans:
            log.warning(
                "%d placeholders of %s have no readable manifest: their opens fail",
                orphans,
                self.root,
            )

    def _watch(self, path: Path) -> tuple[int, int] | None:
        """Mark the placeholder at ``path``; its (device, inode), or None where there is
        none (gone, or filled)."""
        try:
            # O_PATH: no open event (an adopted group still has its marks, and nobody
            # answers them yet).
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            if not is_placeholder(f"/proc/self/fd/{fd}", follow=True):
                return None
            self._marks.add(-1, f"/proc/self/fd/{fd}")
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return st.st_dev, st.st_ino

    def _entry_path(self, record: FileRecord) -> Path:
        return self.root / record.hash[:2] / entry_name(record)
