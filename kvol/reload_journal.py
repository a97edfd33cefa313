"""The reload's journal and its notes of what it landed and removed, and how a reload
that stopped midway (killed, or failed) is settled from them by the next command."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kvol import fsops, paths
from kvol.copybase import JOURNAL_FILE, LANDING_FILE, REMOVAL_FILE, SCAN_DIR_FLAGS, CopyBase
from kvol.errors import CorruptData, KvolError
from kvol.index import UNMATCHED, IndexEntry, Signature
from kvol.model import FileRecord, State

log = logging.getLogger(__name__)


class ReloadJournal(CopyBase):
    """A reload's records on disk, and settling a reload that stopped midway."""

    def _write_journal(self, base: int, view: State, touched: set[str]) -> None:
        # Records a finished reload (or a copy's creation) left are not this reload's: a
        # file they name as landed and gone since would pass for a deletion made here.
        self._drop_reload_records()
        all_dirs = view.all_dirs()
        # The directories the reload may make: those it touches, and those that hold what
        # it writes (a directory only files imply is named by no operation).
        near = touched | {a for p in touched for a in paths.ancestors(p)}
        gone = {p for p in touched if p not in view.files and p not in all_dirs}
        journal = {
            "format": 1,
            "base": base,
            "target": view.seq,
            "files": {p: view.files[p].to_list() for p in sorted(touched) if p in view.files},
            "dirs": sorted(p for p in near if p in all_dirs),
            "explicit_dirs": sorted(p for p in near if p in view.dirs),
            "gone": sorted(gone),
            # Files the reload may remove: which were there when it began (see REMOVAL_FILE).
            "gone_present": sorted(
                p for p in gone if self.index.holds(p) and os.path.lexists(self.root / p)
            ),
        }
        fsops.write_atomically(
            self.meta_dir / JOURNAL_FILE, json.dumps(journal, separators=(",", ":")).encode()
        )

    def _reload_records(self, name: str) -> list[Any]:
        """The lines of a reload's record file (LANDING_FILE, REMOVAL_FILE), parsed; the
        last line of a reload killed while appending it is skipped."""
        try:
            lines = (self.meta_dir / name).read_text().splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def _removed_by_reload(self) -> set[str]:
        """Files a stopped reload removed (or was about to: see REMOVAL_FILE)."""
        removed: set[str] = set()
        for rel in self._reload_records(REMOVAL_FILE):
            if isinstance(rel, str):
                with contextlib.suppress(KvolError):
                    removed.add(paths.check(rel))
        return removed

    def _landed_then_removed(self, root_fd: int) -> set[str]:
        """Files a stopped reload moved into place that are gone again: their staged copy
        was moved, so only a local deletion can have removed them."""
        removed: set[str] = set()
        for record in self._reload_records(LANDING_FILE):
            try:
                rel, staging_dir, name = record
                staged = f"{staging_dir}/{name}"
                paths.check(rel)
                paths.check(staged)
            except (ValueError, TypeError, KvolError):
                continue
            if not staging_dir.startswith(Staging.PREFIX):
                continue
            if fsops.lstat(root_fd, rel) is None and fsops.lstat(root_fd, staged) is None:
                removed.add(rel)
        return removed

    def _finish_emptied_dirs(self, root_fd: int, kept: set[str], removed: set[str]) -> None:
        """Remove the directories a stopped reload emptied and was about to remove: those
        the volume no longer has (not in ``kept``), empty now, with a file the reload
        removed (``removed``) below them. Left, one would read as a directory this copy
        emptied itself, a change of its own that its next commit would publish."""
        index = self.index
        candidates = {a for rel in removed for a in paths.ancestors(rel)}
        for rel in sorted(candidates, reverse=True):  # deepest first
            if rel not in index.dirs or rel in kept or rel in index.files:
                continue
            if fsops.is_empty_dir(root_fd, rel) and fsops.remove_empty_dir(root_fd, rel):
                index.dirs.discard(rel)
                index.explicit_dirs.discard(rel)

    def _forget_emptied_here(self, deleted_here: set[str], kept: set[str]) -> None:
        """Directories the volume held only by files this copy deleted itself before the
        reload (forgotten now: the volume deleted them too) and no longer has (not in
        ``kept``): what is left of them here is this copy's own emptied directory, as a
        finished reload leaves it, off the record of the volume's (its next commit
        publishes it as made)."""
        index = self.index
        candidates = {a for rel in deleted_here for a in paths.ancestors(rel)} & index.dirs
        candidates -= index.explicit_dirs | kept
        if not candidates:
            return
        index.dirs -= candidates - index.implied_dirs()

    def _recover(self) -> None:
        """Settle a reload that stopped midway (killed, or failed), from its journal.

        The index is the one from before the reload. Each path the reload was to touch is
        looked at: a file that holds the content the reload was writing landed (it is
        recorded clean, with its new record), a path the reload was deleting that is gone
        is forgotten, and directories are recorded as they stand. Everything else keeps
        its old entry: an untouched file is still clean at the old base, and a local change
        is still a local change. The base stays where it was; the next reload finishes.
        """
        path = self.meta_dir / JOURNAL_FILE
        try:
            journal = json.loads(path.read_bytes())
            # As the log has them: a record whose parts do not add up (older versions
            # wrote some) is one unreadable file, never a copy no command can open.
            files = {
                str(p): FileRecord.from_list(r, check_size=False)
                for p, r in journal["files"].items()
            }
            dirs = [str(p) for p in journal["dirs"]]
            explicit = {str(p) for p in journal["explicit_dirs"]}
            gone = [str(p) for p in journal["gone"]]
            # Absent in journals of older versions: every missing file counts as removed.
            present = journal.get("gone_present")
            present_at_start = None if present is None else {str(p) for p in present}
            journal_base = int(journal["base"])
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError, AttributeError, CorruptData) as exc:
            raise CorruptData(f"reload journal {path} is unreadable: {exc}") from exc
        # The index as saved (the reload changed the one in memory, not the file).
        index = self._load_saved_index()
        if index.base != journal_base:
            self._drop_journal()  # the reload finished: its index was saved
            return
        for rel in [*files, *dirs, *gone]:
            paths.check(rel)
        root_fd = fsops.open_root(str(self.root))
        try:
            removed_since = self._landed_then_removed(root_fd)
            removed_by_reload = self._removed_by_reload()
            deleted_here: set[str] = set()
            for rel in gone:
                st = fsops.lstat(root_fd, rel)
                if (
                    st is None
                    and present_at_start is not None
                    and rel in present_at_start
                    and rel not in removed_by_reload
                ):
                    # There when the reload began, never removed by it: deleted here, a
                    # deletion for the next commit (the volume's own went in after base).
                    continue
                if st is None:
                    if rel in index.files and rel not in removed_by_reload:
                        deleted_here.add(rel)
                    index.files.pop(rel, None)
                if st is None or not stat.S_ISDIR(st.st_mode):
                    index.dirs.discard(rel)
                    index.explicit_dirs.discard(rel)
            for rel in dirs:
                st = fsops.lstat(root_fd, rel)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    index.files.pop(rel, None)
                    index.dirs.add(rel)
                    if rel in explicit:
                        index.explicit_dirs.add(rel)
                elif st is None and rel in removed_by_reload:
                    # The reload removed the file where the volume now has a directory,
                    # and stopped before making it: not a deletion of this copy's.
                    index.files.pop(rel, None)
            for rel, record in files.items():
                st = fsops.lstat(root_fd, rel)
                if st is None and rel in removed_since:
                    # Landed, then deleted here: a deletion to commit, not a file to write.
                    index.files[rel] = IndexEntry(record, UNMATCHED)
                    continue
                if st is None and rel not in index.files:
                    # The reload removed the directory where the volume now has a file
                    # and stopped before writing it (or this copy removed it: so did the
                    # volume). Kept on the record, it would read as a directory this copy
                    # removed, and the next commit would publish that removal.
                    index.dirs.discard(rel)
                    index.explicit_dirs.discard(rel)
                    continue
                if st is None or not stat.S_ISREG(st.st_mode):
                    continue
                index.dirs.discard(rel)
                index.explicit_dirs.discard(rel)
                entry = index.files.get(rel)
                if entry is not None and self._is_clean(root_fd, rel, entry, st):
                    if (
                        entry.record is not None
                        and entry.record.hash == record.hash
                        and fsops.safe_mode(entry.record.mode) == fsops.safe_mode(record.mode)
                    ):
                        entry.record = record
                    continue  # the old file, untouched: the next reload replaces it
                landed = self._holds(root_fd, rel, record)
                if landed is not None:
                    index.files[rel] = IndexEntry(record, Signature.of(landed))
            self._forget_emptied_here(deleted_here, set(dirs))
            self._finish_emptied_dirs(root_fd, set(dirs), removed_by_reload)
            self._remove_temporaries(root_fd, {paths.parent(p) for p in files})
            Staging.remove_stale(root_fd)
        finally:
            os.close(root_fd)
        self._sync_tree()
        self._save_index()
        self._drop_journal()

    @staticmethod
    def _remove_temporaries(root_fd: int, dirs: set[str]) -> None:
        """Remove the temporary files a stopped download left in ``dirs``."""
        for rel_dir in dirs:
            try:
                dfd = fsops.open_dir(root_fd, rel_dir)
            except (OSError, KvolError):
                continue
            try:
                for name in os.listdir(dfd):
                    if name.startswith(fsops.TEMP_PREFIX):
                        with contextlib.suppress(OSError):
                            os.unlink(name, dir_fd=dfd)
            finally:
                os.close(dfd)


def kept_sig(entry: IndexEntry | None, st: os.stat_result | None) -> Signature | None:
    """The signature to keep for a path where a reload kept what the copy has over the
    volume's file. A local file is a version of that file: the copy has seen the volume's,
    whatever becomes of its own. A local directory hides it, unless the copy had it."""
    sig = None if entry is None else entry.sig
    if sig is None and st is not None and stat.S_ISREG(st.st_mode):
        return UNMATCHED
    return sig


class RemovalLog:
    """REMOVAL_FILE, opened at the first removal. A line is written before each removal;
    line-buffered, so a process kill keeps every line written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def note(self, rel: str) -> None:
        if self._file is None:
            self._file = open(self.path, "a", buffering=1)  # noqa: SIM115
        self._file.write(json.dumps(rel) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@dataclass
class Staging:
    """A directory at the top of the copy holding a reload's downloads until they are
    moved into place (its name starts with the temporary prefix: scans skip it)."""

    name: str
    fd: int
    #: Path in the volume -> (name in the staging directory, the file as written).
    files: dict[str, tuple[str, fsops.Staged]] = field(default_factory=dict)

    PREFIX = fsops.TEMP_PREFIX + "reload-"

    @classmethod
    def make(cls, root_fd: int) -> Staging:
        name = cls.PREFIX + secrets.token_hex(6)
        os.mkdir(name, 0o700, dir_fd=root_fd)
        return cls(name, os.open(name, SCAN_DIR_FLAGS, dir_fd=root_fd))

    def remove(self, root_fd: int) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            fsops.remove_tree_at(root_fd, self.name)
        except FileNotFoundError:
            pass
        except OSError as exc:  # replaced meanwhile (by a symlink, say): never followed
            log.warning("could not remove the reload's staging directory %s: %s", self.name, exc)

    @classmethod
    def remove_stale(cls, root_fd: int) -> None:
        """Remove staging directories a reload that died left behind."""
        for name in os.listdir(root_fd):
            if not name.startswith(cls.PREFIX):
                continue
            with contextlib.suppress(OSError):  # gone, or not ours (not a directory)
                if stat.S_ISDIR(os.stat(name, dir_fd=root_fd, follow_symlinks=False).st_mode):
                    fsops.remove_tree_at(root_fd, name)
