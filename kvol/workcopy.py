"""Working copies: a plain directory plus an index, based on one commit of a volume.

Programs read and write the directory at disk speed. ``commit()`` publishes what changed
since the copy last matched the volume (found by stat, so untouched files are never read);
``reload()`` applies newer commits and keeps local changes that are not committed yet,
because they will be the last write. See DESIGN: Working copies.

Subclasses may change how changes are found (``_scan``): the copy-on-write layout of the
CSI plugin only walks its upper layer.

Rules that keep every change:

- A deletion names what this copy saw: removing a directory tree publishes an unlink of
  each file under it that the copy had at its base and an rmdir of each explicit
  directory, deepest first, so files other writers added there meanwhile survive. A
  file of the volume this copy never had (kept out by a local file in its way) is never
  deleted by it: only replaced, when this copy publishes something at that path.
- A reload never removes or overwrites a path that is not clean. Where this copy has an
  uncommitted file (or other non-directory) and a newer commit has a directory, commit
  order decides and no uncommitted change is discarded: the local file stays, the files
  of the volume under that directory are not written here (``status`` lists them as
  deleted, since this copy does not have them) and they stay in the volume until this
  copy's next commit, the later write, publishes its file at that path. The other way
  round (a local directory, a newer file) the local directory stays the same way.
- A reload journals the paths it will touch, with the content each will hold, before it
  touches any; one that dies midway is settled from the journal by the next command, so
  the files it wrote are recorded as clean and never published back over newer commits.
- Special files (FIFOs, sockets, devices, symlinks) are never read or followed: a commit
  skips them and says so. Only permission bits of a mode are published or applied.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import threading
from pathlib import Path

from kvol import fsops, metrics, paths
from kvol.committing import Committing
from kvol.copybase import (
    COMMIT_JOURNAL_FILE,
    CONFIG_FILE,
    CREATING_FILE,
    DEFAULT_CONCURRENCY,
    INDEX_FILE,
    JOURNAL_FILE,
    LANDING_FILE,
    LOCK_FILE,
    REMOVAL_FILE,
    CommitResult,
    ReloadResult,
    ScanResult,
    Status,
    found_key,
)
from kvol.errors import CorruptData, InvalidArgument, KvolError, NotFound
from kvol.index import DELTA_SUFFIX, Index
from kvol.reloading import Reloading
from kvol.repo import Repo
from kvol.store import Store, open_store

__all__ = [
    "COMMIT_JOURNAL_FILE",
    "CONFIG_FILE",
    "DEFAULT_CONCURRENCY",
    "INDEX_FILE",
    "JOURNAL_FILE",
    "CommitResult",
    "ReloadResult",
    "ScanResult",
    "Status",
    "WorkingCopy",
]

log = logging.getLogger(__name__)


class WorkingCopy(Committing, Reloading):
    """A working copy: a plain directory plus an index, based on one commit of a volume."""

    # -- opening --------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        repo: Repo,
        root: str | os.PathLike[str],
        meta_dir: str | os.PathLike[str] | None = None,
        *,
        read_only: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> WorkingCopy:
        """Make a new working copy of the volume's head in ``root`` (empty or missing).

        All or nothing: if it fails, what it made is removed again, and a copy whose
        creation was killed (marked by a creation marker, with no configuration yet) is
        cleared and made again by the next create. The configuration, which makes the
        directory a working copy, is written last.
        """
        root_path = Path(root).absolute()
        meta_path = Path(meta_dir).absolute() if meta_dir else root_path / paths.RESERVED
        made_root = not root_path.exists()
        root_path.mkdir(parents=True, exist_ok=True)
        leftovers = [p.name for p in root_path.iterdir() if p != meta_path]
        configured = (meta_path / CONFIG_FILE).exists()
        unfinished = not configured and (meta_path / CREATING_FILE).exists()
        if leftovers and not unfinished:
            raise InvalidArgument(
                f"{root_path} is not empty: a working copy needs an empty directory"
            )
        if configured:
            raise InvalidArgument(f"{root_path} is a working copy already")
        repo.meta  # noqa: B018 - fail early, before anything is written, if the volume is gone
        made_meta = not meta_path.exists()
        if unfinished:
            # A create that was killed: everything here is what it downloaded.
            _clear(root_path, keep=meta_path)
        meta_path.mkdir(parents=True, exist_ok=True)
        fsops.write_atomically(meta_path / CREATING_FILE, b"")
        try:
            wc = cls._build(repo, root_path, meta_path, read_only, concurrency)
        except BaseException:
            _clear(root_path, keep=meta_path)
            for name in (
                CONFIG_FILE,
                INDEX_FILE,
                INDEX_FILE + DELTA_SUFFIX,
                LOCK_FILE,
                JOURNAL_FILE,
                LANDING_FILE,
                REMOVAL_FILE,
                COMMIT_JOURNAL_FILE,
                CREATING_FILE,
            ):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(meta_path / name)
            if made_meta:
                with contextlib.suppress(OSError):
                    meta_path.rmdir()
            if made_root:
                with contextlib.suppress(OSError):
                    root_path.rmdir()
            raise
        os.unlink(meta_path / CREATING_FILE)
        return wc

    @classmethod
    def _build(
        cls,
        repo: Repo,
        root_path: Path,
        meta_path: Path,
        read_only: bool,
        concurrency: int,
    ) -> WorkingCopy:
        config = {
            "format": 1,
            "store": repo.store.url,
            "volume_id": repo.volume_id,
            "read_only": read_only,
        }
        wc = cls(
            repo,
            root_path,
            meta_path,
            Index(repo.volume_id),
            read_only=read_only,
            concurrency=concurrency,
        )
        try:
            with wc._locked():
                state = repo.state()
                touched = set(state.files) | state.all_dirs()
                wc._apply(state, touched)
                wc.index.base = state.seq
                wc._sync_tree()
                wc._save_index()
                # Its records of what landed are done with: a later reload stopped midway
                # must never take them for its own (see _landed_then_removed).
                wc._drop_journal()
        except BaseException:
            wc.close(final_commit=False)  # no copy was made: not a writer
            raise
        fsops.write_atomically(
            meta_path / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode()
        )
        return wc

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        meta_dir: str | os.PathLike[str] | None = None,
        *,
        store: Store | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> WorkingCopy:
        """Open an existing working copy (after a restart, or from another process)."""
        root_path = Path(root).absolute()
        meta_path = Path(meta_dir).absolute() if meta_dir else root_path / paths.RESERVED
        try:
            config = json.loads((meta_path / CONFIG_FILE).read_text())
            volume_id = str(config["volume_id"])
            store_url = str(config["store"])
            read_only = bool(config.get("read_only", False))
        except FileNotFoundError as exc:
            raise NotFound(
                f"{root_path} is not a kvol working copy (no {paths.RESERVED}/{CONFIG_FILE})"
            ) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptData(f"working copy configuration in {meta_path} is unreadable") from exc
        store = store or open_store(store_url)
        index = Index.load(meta_path / INDEX_FILE)
        if index.volume_id != volume_id:
            raise CorruptData(f"working copy index in {meta_path} belongs to another volume")
        copy = cls(
            Repo(store, volume_id),
            root_path,
            meta_path,
            index,
            read_only=read_only,
            concurrency=concurrency,
        )
        copy._settle_stopped_reload()
        return copy

    # -- status ---------------------------------------------------------------------

    def status(self) -> Status:
        with self._locked(settle=False):
            scan = self._scan()
        changed = []
        for rel, found in scan.candidates.items():
            entry = self.index.entry(rel)
            if (
                entry is not None
                and entry.racy
                and entry.stat_key is not None
                and found_key(found) == entry.stat_key
            ):
                continue  # only flagged for a re-hash, not known to differ
            changed.append(rel)
        uncommitted = sum(found_key(scan.candidates[r])[0] for r in changed)
        self._set_uncommitted(uncommitted)
        deleted = sorted(scan.deleted | scan.dirs_removed)
        return Status(
            self.repo.volume_id,
            self.index.base,
            tuple(sorted(changed)),
            tuple(deleted),
            uncommitted,
        )

    @property
    def uncommitted_bytes(self) -> int:
        """Changed bytes not yet committed, as of the last status or commit."""
        return self._uncommitted

    # -- autocommit and closing -----------------------------------------------------

    def start_autocommit(self, interval_seconds: float, *, track_changes: bool = True) -> None:
        """Commit in the background every ``interval_seconds``; with ``track_changes``,
        finding changes from inotify events meanwhile (see :meth:`track_changes`)."""
        if interval_seconds <= 0:
            raise InvalidArgument("autocommit interval must be positive")
        if self.read_only or self._autocommit is not None:
            return
        self._stop.clear()
        if track_changes:
            self.track_changes()
        self._autocommit = threading.Thread(
            target=self._autocommit_loop,
            args=(interval_seconds,),
            name="kvol-autocommit",
            daemon=True,
        )
        self._autocommit.start()

    def _autocommit_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.commit()
                self.autocommit_error = None
            except KvolError as exc:
                # The changes stay in the copy; the next tick or the final commit retries.
                self.autocommit_error = exc
                log.warning("autocommit of %s failed (will retry): %s", self.root, exc)
            except Exception:
                log.exception("autocommit of %s failed unexpectedly (will retry)", self.root)

    def stop_autocommit(self) -> None:
        thread = self._autocommit
        if thread is None:
            return
        self._stop.set()
        thread.join()
        self._autocommit = None
        # Changes the events may not show (see kvol.tracker) are found by the full scan
        # of whatever commit comes next, such as a final one.
        self.stop_tracking()

    def track_changes(self, full_scan_seconds: float | None = None) -> bool:
        """Find changes from inotify events rather than a stat of every file, for as long
        as this process holds the copy open (autocommit does; see kvol.tracker), with a
        full scan at least every ``full_scan_seconds``. Returns whether tracking is on: not
        where inotify is unavailable, nor for a layout that finds changes its own way."""
        from kvol import tracker

        if type(self)._scan is not WorkingCopy._scan:
            return False
        with self._thread_lock:
            if self._tracker is None:
                try:
                    self._tracker = tracker.ChangeTracker(
                        self.root,
                        full_scan_seconds=full_scan_seconds or tracker.DEFAULT_FULL_SCAN_SECONDS,
                    )
                except tracker.TrackingUnavailable as exc:
                    log.warning("commits of %s scan every file: %s", self.root, exc)
                    return False
            elif full_scan_seconds:
                self._tracker.full_scan_seconds = full_scan_seconds
            return self._tracker.active

    def stop_tracking(self) -> None:
        with self._thread_lock:
            tracker, self._tracker = self._tracker, None
        if tracker is not None:
            tracker.close()

    def close(self, final_commit: bool = True) -> CommitResult | None:
        """Stop autocommit and make the final commit. If it fails, the error is raised and
        every change is still in the directory: nothing is dropped to let a close finish."""
        if self._closed:
            return None
        self.stop_autocommit()
        self.stop_tracking()  # the final commit scans every file
        result = self.commit() if final_commit and not self.read_only else None
        self._closed = True
        if not self.read_only:
            metrics.WRITERS.dec()
        self._set_uncommitted(0)
        return result

    def __enter__(self) -> WorkingCopy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(final_commit=exc[0] is None)


def _clear(root: Path, keep: Path | None) -> None:
    """Remove everything in ``root`` except ``keep``, never following a symlink."""
    root_fd = fsops.open_root(str(root))
    try:
        for name in os.listdir(root_fd):
            if keep is not None and root / name == keep:
                continue
            st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                fsops.remove_tree_at(root_fd, name)
            else:
                os.unlink(name, dir_fd=root_fd)
    finally:
        os.close(root_fd)
