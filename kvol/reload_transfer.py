"""A reload's content: what it must fetch, fetched into a staging directory and verified
before anything in the tree changes, then moved into place (or written directly where
nothing was staged), each file recorded in the index as soon as it lands. What a reload
changes where is kvol.reloading's."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from kvol import fsops
from kvol.content import ContentReader
from kvol.copybase import LANDING_FILE
from kvol.index import IndexEntry, Signature
from kvol.model import FileRecord, State
from kvol.reload_journal import ReloadJournal, Staging, kept_sig


class ReloadTransfer(ReloadJournal):
    """Fetching a reload's files and putting them in place."""

    def _may_need_content(self, view: State, touched: set[str]) -> list[str]:
        """The touched files of ``view`` whose content the tree may not have: all but those
        this copy has on record with the same content and mode (clean ones need nothing,
        and changed or deleted ones are kept)."""
        wanted = []
        for rel in sorted(p for p in touched if p in view.files):
            entry = self.index.entry(rel)
            known = None if entry is None or entry.sig is None else entry.record
            record = view.files[rel]
            if (
                known is None
                or known.hash != record.hash
                or fsops.safe_mode(known.mode) != fsops.safe_mode(record.mode)
            ):
                wanted.append(rel)
        return wanted

    def _stage(self, root_fd: int, view: State, rels: list[str]) -> Staging | None:
        if not rels:
            return None
        staging = Staging.make(root_fd)
        reader = self.repo.reader()
        reader.prefetch(view.files[r] for r in rels)
        creating = threading.Lock()

        def fetch(number: int, rel: str) -> None:
            record = view.files[rel]
            name = str(number)
            st = fsops.stage_file(
                staging.fd,
                name,
                _filler(reader, record, rel),
                mode=self._view_mode(record.mode),
                mtime_ns=record.mtime_ns,
                creating=creating,
            )
            staging.files[rel] = (name, st)

        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="kvol-down") as pool:
                futures = [pool.submit(fetch, n, rel) for n, rel in enumerate(rels)]
            for future in futures:
                future.result()
        except BaseException:
            staging.remove(root_fd)
            raise
        finally:
            reader.release()
        return staging

    def _install(
        self,
        root_fd: int,
        view: State,
        rels: list[str],
        staging: Staging | None,
        found: dict[str, os.stat_result | None],
        kept: list[str],
    ) -> list[str]:
        """Put ``rels`` in place from the staging directory (downloading any not staged).
        Returns those that could not be written because a local non-directory stands
        where a directory above them must be. A path written since it was ``found``
        clean (or created, where nothing was) is a local change: kept, added to ``kept``."""
        stopped: list[str] = []
        missing: list[str] = []
        landing = open(self.meta_dir / LANDING_FILE, "a", buffering=1)  # noqa: SIM115
        try:
            for rel in rels:
                staged = None if staging is None else staging.files.get(rel)
                if staging is None or staged is None:
                    missing.append(rel)
                    continue
                name, staged_st = staged
                # Before the move (see LANDING_FILE); a process kill keeps what was written.
                landing.write(json.dumps([rel, staging.name, name]) + "\n")
                try:
                    st, same = fsops.install_file(
                        root_fd, rel, staging.fd, name, staged_st, replaces=found.get(rel)
                    )
                except NotADirectoryError:
                    stopped.append(rel)
                    continue
                except fsops.ChangedMeanwhile:
                    kept.append(rel)
                    entry = self.index.entry(rel)
                    # As any kept change: the volume's record, hashed again at the next scan.
                    sig = kept_sig(entry, fsops.lstat(root_fd, rel))
                    self.index.put(rel, IndexEntry(view.files[rel], sig, racy=True))
                    continue
                # Recorded as soon as it is in place, so that if another file fails the index
                # still matches the tree. A write in the instant after the move is caught by
                # hashing the file at the next scan.
                self.index.put(rel, IndexEntry(view.files[rel], Signature.of(st), racy=not same))
        finally:
            landing.close()
        return sorted(stopped + self._download(root_fd, view, missing))

    def _not_materialized(self, rel: str, record: FileRecord) -> None:
        """``rel`` is in the volume as ``record`` but not written here: a kept local file
        stands where its directory should be."""
        entry = self.index.entry(rel)
        if entry is not None:
            entry.record = record
        else:
            self.index.put(rel, IndexEntry(record, None))

    def _download(self, root_fd: int, view: State, rels: list[str]) -> list[str]:
        """Write ``rels`` as ``view`` has them. Returns those that could not be written
        because a local non-directory stands where a directory above them must be."""
        stopped: list[str] = []
        if not rels:
            return stopped
        reader = self.repo.reader()
        reader.prefetch(view.files[r] for r in rels)

        def fetch(rel: str) -> None:
            record = view.files[rel]
            try:
                st = fsops.write_file(
                    root_fd,
                    rel,
                    _filler(reader, record, rel),
                    mode=self._view_mode(record.mode),
                    mtime_ns=record.mtime_ns,
                )
            except NotADirectoryError:
                stopped.append(rel)
                return
            # Recorded as soon as it is written, so that if another file fails the index
            # still matches the tree (nothing written here looks like a local change).
            self.index.put(rel, IndexEntry(record, Signature.of(st)))

        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="kvol-down") as pool:
                futures = [pool.submit(fetch, rel) for rel in rels]
            for future in futures:
                future.result()
        finally:
            reader.release()
        return sorted(stopped)


def _filler(reader: ContentReader, record: FileRecord, rel: str) -> Callable[[int], None]:
    """Writes ``record``'s content to a new file and starts its way to the disk: the sync
    before the index records the reload finds little left to write."""

    def fill(fd: int) -> None:
        reader.write_to(record, fd, rel)
        fsops.start_writeback(fd)

    return fill
