"""Reload: apply commits newer than a working copy's base, keeping every local change that
is not committed yet (it will be the last write). See kvol.workcopy for the rules."""

from __future__ import annotations

import itertools
import os
import stat
import time

from kvol import fsops, metrics, paths
from kvol.busy import find_holders
from kvol.copybase import REMOVAL_FILE, ReloadResult, under_any
from kvol.errors import HistoryPruned, StaleBase, VolumeBusy
from kvol.index import RACY_NS, IndexEntry, Signature
from kvol.model import RmdirOp, State
from kvol.reload_journal import RemovalLog, Staging, kept_sig
from kvol.reload_transfer import ReloadTransfer


class Reloading(ReloadTransfer):
    """A working copy's reload."""

    def reload(self) -> ReloadResult:
        """Apply commits newer than the base. Refused with VolumeBusy while files are held."""
        started = time.perf_counter()
        try:
            with self._locked():
                result = self._reload_locked()
        except VolumeBusy:
            metrics.RELOADS.labels("busy").inc()
            raise
        except Exception:
            metrics.RELOADS.labels("failed").inc()
            raise
        metrics.RELOADS.labels("current" if result.from_seq == result.to_seq else "applied").inc()
        metrics.RELOAD_SECONDS.observe(time.perf_counter() - started)
        return result

    def _reload_locked(self) -> ReloadResult:
        base = self.index.base
        first = self.repo.read_entry(base + 1)
        # Files and directories of the volume a local file kept out before: written now if
        # they can be. A kept-out file with a local file at its path now (the one in its
        # way is gone) is looked at too: the copy has seen the volume's file there, and
        # the local one is its change over it (a deletion of it then deletes the volume's).
        touched = set(self.index.kept_out())
        touched.update(d for d in self.index.kept_out_dirs() if not os.path.lexists(self.root / d))
        pruned = False
        if first is None:
            # "Already up to date" only if the store still holds what this copy has seen.
            try:
                self.repo.check_not_behind(base)
            except (StaleBase, HistoryPruned):
                # A gap right after the base (its next entry pruned) says the same.
                pruned = True  # the base was pruned: start again from the retained state
            if not touched and not pruned:
                return ReloadResult(base, base)
        holders = find_holders(str(self.root), self.busy_device)
        if holders:
            shown = ", ".join(str(h) for h in holders[:5])
            more = f" and {len(holders) - 5} more" if len(holders) > 5 else ""
            raise VolumeBusy(
                f"volume busy: close files under {self.root} before reloading (held by {shown}{more})",
                [(h.pid, h.command, h.path) for h in holders],
            )
        view = self.index.committed_state()
        if first is not None and not pruned:
            kept_out = set(touched)
            try:
                replayed = self.repo.entries_after(base + 1)
                for seq, entry in itertools.chain([(base + 1, first)], replayed):
                    if seq <= self.index.ahead and any(isinstance(op, RmdirOp) for op in entry.ops):
                        # The committed state already holds this copy's later commits:
                        # whether a directory was empty at an entry before them cannot be
                        # told from it, nor at one of them (its removals were recorded as
                        # if nothing came before, though other writers' entries did).
                        pruned, touched = True, kept_out
                        break
                    view.apply(entry, seq, touched)
            except HistoryPruned:
                pruned, touched = True, kept_out  # pruned while being read
        if pruned:
            # The head's state, and every path where it differs from what the copy saw.
            view = self._retained_view(touched)
        # The index changes in place from here: only a full scan compares it with the tree.
        self._forget_tracked_changes()
        # Written (and synced) before the tree is touched: a reload that dies midway is
        # settled from it at the next lock (see _recover), so files it wrote never look
        # like local changes that a commit would publish over newer commits.
        self._write_journal(base, view, touched)
        try:
            kept, written = self._apply(view, touched)
        except BaseException:
            # Settle from what is on disk, at the old base: the next reload does the rest.
            self._recover()
            raise
        self.index.base = view.seq
        if self.index.ahead <= view.seq:
            self.index.ahead = 0
        self._sync_changed(touched)
        self._save_index()
        self._drop_journal()
        return ReloadResult(base, view.seq, written, tuple(sorted(kept)))

    def _retained_view(self, touched: set[str]) -> State:
        """The head, for a copy whose base was pruned: no entries lead there from the base,
        so every path where the head differs from what the copy last saw is touched (and
        reloaded like any other, keeping local changes)."""
        seen = self.index.committed_state()
        view = self.repo.state()
        touched.update(
            p
            for p in seen.files.keys() | view.files.keys()
            if seen.files.get(p) != view.files.get(p)
        )
        touched.update(seen.all_dirs() ^ view.all_dirs())
        touched.update(seen.dirs ^ view.dirs)
        return view

    # -- applying a view ------------------------------------------------------------

    def _apply(self, view: State, touched: set[str]) -> tuple[list[str], int]:
        """Make the tree match ``view`` at ``touched`` paths, keeping local changes.

        Nothing that is not clean is ever removed or overwritten. A local file (or other
        non-directory) that is not clean where the view has a directory stays, and the
        view's files under it are not written: they are recorded as in the volume and
        missing here, so status shows them as deleted, and this copy's next commit, the
        later write, publishes its file there (which replaces them in the volume).
        """
        index = self.index
        all_dirs = view.all_dirs()
        kept: list[str] = []
        #: Paths where a kept local non-directory stands in the way of the view's directory.
        blocked: set[str] = set()
        root_fd = fsops.open_root(str(self.root))
        staging: Staging | None = None
        # Before each removal (see REMOVAL_FILE).
        removals = RemovalLog(self.meta_dir / REMOVAL_FILE)
        removed: list[str] = []
        try:
            # All content first, into a staging directory: content that fails to download
            # or to verify stops the reload before anything in the tree has changed.
            staging = self._stage(root_fd, view, self._may_need_content(view, touched))
            # A directory the volume held only by its files goes with its last file; one
            # this copy had already emptied itself (and kept) stays: that is its own change,
            # which its next commit publishes as a directory (see _dirs_left_empty).
            near = touched | {a for rel in touched for a in paths.ancestors(rel)}
            emptied_here = {
                d
                for d in near
                if d in index.dirs
                and d not in index.explicit_dirs
                and not index.holds(d)
                and fsops.is_empty_dir(root_fd, d)
            }
            vanished = {
                a
                for rel in touched
                for a in paths.ancestors(rel)
                if a in index.dirs and a not in all_dirs
            }
            vanished -= emptied_here
            # Deletions, deepest first, so directories are empty when their turn comes.
            for rel in sorted(touched, reverse=True):
                if rel in view.files or rel in all_dirs:
                    continue
                st = fsops.lstat(root_fd, rel)
                if rel in index.dirs and not index.holds(rel):
                    if rel in emptied_here:
                        continue  # this copy's own change (touched when the base was pruned)
                    if st is not None and stat.S_ISDIR(st.st_mode):
                        fsops.remove_empty_dir(root_fd, rel)  # local new files keep it
                    continue
                entry = index.entry(rel)
                if entry is None or st is None:
                    index.drop(rel)
                    continue
                if self._is_clean(root_fd, rel, entry, st):
                    removals.note(rel)
                    fsops.remove_file(root_fd, rel)
                    index.drop(rel)
                    removed.append(rel)
                else:
                    # Changed here and not committed: it will be the last write.
                    index.drop(rel)
                    kept.append(rel)
            # ... so here too once empty (a local new file keeps it: a change to commit).
            for rel in sorted(vanished, reverse=True):
                st = fsops.lstat(root_fd, rel)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    fsops.remove_empty_dir(root_fd, rel)
            for rel in self._implied_only_by_deleted(root_fd, view, near, removed, emptied_here):
                fsops.remove_empty_dir(root_fd, rel)
            for rel in sorted(d for d in touched if d in all_dirs):
                if under_any(rel, blocked):
                    # Not made here (a kept local file above it). A record of the file the
                    # volume had here goes all the same: the volume's content no longer,
                    # it would be reused by a commit (and collected once pruned).
                    index.drop(rel)
                    continue
                st = fsops.lstat(root_fd, rel)
                if (
                    st is None
                    and rel in index.dirs
                    and (rel in index.explicit_dirs or rel not in view.dirs)
                ):
                    # Removed here and not committed: the removal is the last write. (A
                    # directory the volume only implied goes with its files, which is no
                    # change of its own: made explicit since, it is made here.)
                    continue
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    entry = index.entry(rel)
                    if entry is not None and self._is_clean(root_fd, rel, entry, st):
                        removals.note(rel)
                        fsops.remove_file(root_fd, rel)
                        index.drop(rel)
                    elif stat.S_ISLNK(st.st_mode):
                        kept.append(rel)  # never replaced; writing under it fails below
                        continue
                    else:
                        kept.append(rel)
                        blocked.add(rel)
                        # The volume has no file here now; the local one is a new file.
                        index.put(rel, IndexEntry(None, entry.sig if entry else None, True))
                        continue
                # The volume's file here is gone, and so is the copy's (it made a directory
                # here itself, or deleted the file): a record of it left behind would read
                # as a file above everything under this directory, and hide it all.
                index.drop(rel)
                try:
                    fsops.make_dirs(root_fd, rel)
                except NotADirectoryError:
                    blocked.add(rel)  # a kept local file above it
            # A local file an earlier reload kept in the way of a directory of the volume
            # (one this copy never had), untouched now (this reload retries what it kept
            # out): it still blocks it.
            for rel in sorted(near - touched):
                if rel in all_dirs and rel not in index.dirs and not under_any(rel, blocked):
                    st = fsops.lstat(root_fd, rel)
                    if st is not None and not stat.S_ISDIR(st.st_mode):
                        blocked.add(rel)
                        kept.append(rel)
            known_dirs = index.dirs
            # Directories of the volume under a local file kept in their way are not here:
            # this copy never had them, so its commits must not remove them (they stay on
            # record as the volume's, and a later reload makes them once the file goes).
            index.dirs = {d for d in all_dirs if d not in blocked and not under_any(d, blocked)}
            index.explicit_dirs = set(view.dirs)

            to_write: list[str] = []
            #: What each path to write held when found clean (None: nothing).
            found: dict[str, os.stat_result | None] = {}
            for rel in sorted(p for p in touched if p in view.files):
                record = view.files[rel]
                entry = index.entry(rel)
                if under_any(rel, blocked):
                    self._not_materialized(rel, record)
                    continue
                st = fsops.lstat(root_fd, rel)
                if (
                    st is not None
                    and stat.S_ISDIR(st.st_mode)
                    and rel in known_dirs
                    and rel not in emptied_here
                    and fsops.remove_empty_dir(root_fd, rel)
                ):
                    # A directory of the volume, emptied above, that a file replaced.
                    st = None
                if st is None:
                    if entry is not None and entry.matched_volume:
                        # Deleted here and not committed: the deletion is the last write.
                        # (Not of a file the copy made itself and never published: that
                        # deletion claims nothing of the volume's, whose file comes here.)
                        entry.record = record
                        kept.append(rel)
                        continue
                    to_write.append(rel)
                    found[rel] = None
                    continue
                if entry is None or entry.sig is None:
                    landed = self._holds(root_fd, rel, record)
                    if landed is not None:
                        # A new local file with the very bytes the volume now has there:
                        # no change left to commit, and nothing to write.
                        racy = landed.st_mtime_ns >= time.time_ns() - RACY_NS
                        index.put(rel, IndexEntry(record, Signature.of(landed), racy))
                        continue
                if entry is None or not self._is_clean(root_fd, rel, entry, st):
                    kept.append(rel)
                    # Stay "racy" so the next scan hashes it rather than trusting the stat.
                    index.put(rel, IndexEntry(record, kept_sig(entry, st), racy=True))
                    continue
                assert entry is not None
                if (
                    entry.record is not None
                    and entry.record.hash == record.hash
                    and fsops.safe_mode(entry.record.mode) == fsops.safe_mode(record.mode)
                ):
                    entry.record = record
                    continue
                to_write.append(rel)
                found[rel] = st
            kept_before = len(kept)
            stopped = self._install(root_fd, view, to_write, staging, found, kept)
            changed_meanwhile = len(kept) - kept_before
            for rel in stopped:
                # An ancestor is a local file that is kept (not a path this reload touched).
                self._not_materialized(rel, view.files[rel])
                for ancestor in paths.ancestors(rel):
                    st = fsops.lstat(root_fd, ancestor)
                    if st is not None and not stat.S_ISDIR(st.st_mode):
                        if ancestor not in kept:
                            kept.append(ancestor)
                        break
        finally:
            removals.close()
            if staging is not None:
                staging.remove(root_fd)
            os.close(root_fd)
        return kept, len(to_write) - len(stopped) - changed_meanwhile

    def _implied_only_by_deleted(
        self,
        root_fd: int,
        view: State,
        near: set[str],
        removed: list[str],
        emptied_here: set[str],
    ) -> list[str]:
        """Empty directories that the volume now has only through files this copy deleted:
        those this reload emptied (its removals took their last files here), and those the
        volume had explicitly and no longer does. Deepest first. Such a directory goes as
        one the volume dropped would (the copy's tree is the volume's plus its own changes,
        and nothing there implies it). One the copy emptied itself of what the volume only
        implied stays (its own change, published as a directory), as does one the volume
        records explicitly."""
        index = self.index
        was_explicit = {d for d in near if d in index.explicit_dirs and d not in view.dirs}
        # Those holding a file this reload removed, or a directory the volume dropped.
        above = {a for rel in [*removed, *was_explicit] for a in paths.ancestors(rel)}
        pool = {
            a
            for a in was_explicit | above
            if a in index.dirs and a not in view.dirs and a not in emptied_here
        }
        candidates: set[str] = set()
        # Deepest first: one that holds only directories going too is empty once they go.
        for a in sorted(pool, key=paths.deepest_first):
            going = {c.rpartition("/")[2] for c in candidates if paths.parent(c) == a}
            if fsops.is_empty_dir(root_fd, a, ignoring=going):
                candidates.add(a)
        if not candidates:
            return []
        for p in [*view.files, *view.dirs]:
            held = [a for a in paths.ancestors(p) if a in candidates]
            if not held:
                continue
            # Deleted here (not written by this reload either: see the kept deletions): a
            # file of the volume's this copy had, or a directory the volume has explicitly
            # that it had.
            if p in view.files:
                entry = index.entry(p)
                had = entry is not None and entry.matched_volume
            else:
                had = p in index.dirs
            deleted_here = had and fsops.lstat(root_fd, p) is None
            if not deleted_here:
                candidates.difference_update(held)  # something of the volume's stays here
        return sorted(candidates, reverse=True)
