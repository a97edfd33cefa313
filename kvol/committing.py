"""Commit: publish what changed in a working copy since it last matched the volume,
found by stat (untouched files are never read), journaled so that a commit that dies
midway is settled by the next one (see docs/data-safety.md)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import IO, Any, cast

from kvol import fsops, metrics, paths
from kvol.commit_journal import (
    Published,
    Put,
    ops_payload,
    read_commit_journal,
    write_commit_journal,
)
from kvol.commit_limits import check_limits
from kvol.content import PACK_THRESHOLD, ContentWriter, SmallReader, Uploaded, same_stat
from kvol.copybase import (
    COMMIT_JOURNAL_FILE,
    CommitResult,
    CopyBase,
    Found,
    ScanResult,
    found_key,
    under_any,
)
from kvol.errors import ReadOnly, WriteBackFailed
from kvol.index import (
    RACY_NS,
    IndexEntry,
    SigTuple,
    as_stat_key,
    packed_sig,
    unpack_sig,
)
from kvol.model import FileRecord, MkdirOp, Op, PutOp, RmdirOp, UnlinkOp

log = logging.getLogger(__name__)

#: Small files read and packed by one task of a commit.
SMALL_BATCH = 256


#: A commit of this many changed files gives the memory its phases freed back to the
#: system between them (see _release_freed_memory).
_LARGE_COMMIT_FILES = 10_000


class Committing(CopyBase):
    """A working copy's commit."""

    def commit(self, message: str | None = None) -> CommitResult:
        """Publish every change since the copy last matched the volume."""
        if self.read_only:
            raise ReadOnly("this working copy is read-only")
        started = time.perf_counter()
        try:
            with self._locked():
                try:
                    result = self._commit_locked(message)
                except WriteBackFailed:
                    # What the commit changed in the index in memory before its sync
                    # failed (stats of touched files) is not on the disk: go on from the
                    # saved index, looking at every file again.
                    self._load_saved_index()
                    self._forget_tracked_changes()
                    raise
        except Exception:
            metrics.COMMITS.labels("failed").inc()
            raise
        if result.seq is None:
            metrics.COMMITS.labels("empty").inc()
        else:
            metrics.COMMITS.labels("published").inc()
            metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
            metrics.COMMITTED_BYTES.inc(result.bytes)
            metrics.COMMITTED_FILES.inc(result.files + result.deleted)
        self._set_uncommitted(0 if not result.deferred else self._uncommitted)
        return result

    def _commit_locked(self, message: str | None) -> CommitResult:
        scan_started_ns = time.time_ns()
        scan = self._scan()
        # What this commit is about to publish is uncommitted until it lands: a failing
        # commit leaves it counted, so data piling up in the copy shows.
        self._set_uncommitted(sum(found_key(f)[0] for f in scan.candidates.values()))
        index = self.index
        removed_dirs = _outermost(scan.dirs_removed)
        # A deletion names what this copy saw at its base: every file of a removed tree the
        # index has a record of, then its explicit directories, deepest first. A file
        # another writer added under such a directory meanwhile is not named and survives
        # (and keeps its directory). Files this copy never published need no deletion.
        gone = set(scan.deleted)
        gone_dirs: set[str] = set()
        if removed_dirs:
            gone.update(p for p in index.paths() if under_any(p, removed_dirs))
            gone_dirs = {
                d for d in index.explicit_dirs if d in removed_dirs or under_any(d, removed_dirs)
            }
        # Files of the volume this copy never had (kept out by a local file in the way of
        # their directory, or by something not regular at their path): not this copy's
        # to delete. A file or directory this commit publishes in their place replaces
        # them; the others stay on record, to be written here by a later reload.
        gone_entries = {p: index.entry_of(p) for p in gone}
        never_had = {p for p, e in gone_entries.items() if e.stat_key is None and e.has_record}
        # Nor is a directory the volume has explicitly that this copy never had (a local
        # file stood where it goes): it was never this copy's to remove. The directories
        # this copy had that hold such files are removed as seen: a removal applies only
        # once nothing is left under a directory, so the volume keeps them while those
        # files are there, and drops them once another writer removed those files too.
        gone_dirs -= index.kept_out_dirs()
        file_deletes = sorted(
            p for p, e in gone_entries.items() if p not in never_had and e.has_record
        )
        del gone_entries
        rmdirs = sorted(gone_dirs, reverse=True)  # a directory after everything under it
        ops: list[Op] = [UnlinkOp(p) for p in file_deletes]
        ops += [RmdirOp(d) for d in rmdirs]
        # A directory here that the volume has only through files this copy never had:
        # the copy made it as far as it saw the volume, so it is published as made.
        made = scan.dirs_added | self._implied_only_by_hidden(scan, never_had)
        ops += [MkdirOp(d) for d in sorted(made)]

        large = len(scan.candidates) >= _LARGE_COMMIT_FILES
        uploads, stats, unreadable = self._upload(scan.candidates)
        if large:
            _release_freed_memory()  # the upload's buffers, before records take their place
        skipped = sorted(scan.skipped | unreadable)
        if skipped:
            shown = ", ".join(skipped[:5]) + (
                f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            )
            log.warning("not committed from %s (not regular files): %s", self.root, shown)

        def racy(sig: SigTuple) -> bool:
            return sig[1] >= scan_started_ns - RACY_NS

        puts: dict[str, Put] = {}
        refreshed: dict[str, SigTuple] = {}
        deferred: list[str] = []
        sent_bytes = sum(u.sent_bytes for u in uploads.values())
        modes: dict[int, int] = {}  # one int per distinct mode, not one per file
        moved_from: dict[str, FileRecord] | None = None  # see _deleted_by_content
        # Each upload and stat goes once its record is made: at 100,000 files they are
        # tens of MiB, which the journal and the log entry would otherwise come on top of.
        for rel in sorted(uploads):
            up, packed = uploads.pop(rel), stats.pop(rel)
            if not up.stable:
                deferred.append(rel)
                continue
            sig = unpack_sig(packed)
            # Only permission bits are published: set-id and sticky bits are never applied
            # by a copy (see fsops.safe_mode), so they are not recorded either.
            entry = index.entry(rel)
            seen = entry.record if entry is not None else None
            if seen is None and file_deletes:
                # A file moved here keeps its mode, as mv keeps it, where the copy shows
                # it in a view of its own (a mount group's): the record it was moved from.
                if moved_from is None:
                    moved_from = self._deleted_by_content(file_deletes)
                seen = moved_from.get(up.hash)
            mode = self._committed_mode(sig[4], seen)
            mode = modes.setdefault(mode, mode)
            if (
                entry is not None
                and entry.record is not None
                and entry.sig is not None  # a file this copy never had is a new write
                and entry.record.hash == up.hash
                and fsops.safe_mode(entry.record.mode) == mode
            ):
                refreshed[rel] = sig  # touched, not changed: nothing to publish
                continue
            record = FileRecord(up.size, sig[1], mode, up.hash, up.parts)
            puts[rel] = (record, packed, racy(sig))
            ops.append(PutOp(rel, record))
        del uploads, stats  # emptied, but their tables stay until they go

        # A directory only its files implied, kept here while this commit removes its last
        # file, is published as a directory: else it would leave the volume with the file.
        kept_dirs = [
            d
            for d in self._dirs_left_empty(scan, file_deletes, gone_dirs, puts, never_had)
            if d not in made
        ]
        ops += [MkdirOp(d) for d in kept_dirs]

        for rel, sig in refreshed.items():
            entry = index.entry_of(rel)
            entry.stat_key, entry.racy = sig, racy(sig)
        gone -= {
            p
            for p in never_had
            if p not in scan.dirs_added and not any(a in puts for a in paths.ancestors(p))
        }
        if not ops:
            # Entries of files never published that are gone locally need no deletion.
            forgotten = gone.difference(file_deletes)
            for p in forgotten:
                index.drop(p)
            if refreshed or forgotten:
                self._sync_changed([*refreshed, *forgotten])
                self._save_index()
            return CommitResult(None, deferred=tuple(deferred), skipped=tuple(skipped))

        check_limits(index, self.repo.meta.limits, removed_dirs, file_deletes, puts, made)
        done = Published(
            gone=sorted(gone),
            removed_dirs=sorted(removed_dirs),
            dirs_added=sorted(made.union(kept_dirs)),
            puts=puts,
        )
        # The files as read, and the deletions, on disk before anything records them:
        # after a power loss the index must not call a file clean that its disk lost
        # (read as changed, the next commit would publish it over this one). A removed
        # tree is synced as its removal from its parent.
        self._sync_changed(
            [
                *done.puts,
                *refreshed,
                *(p for p in done.gone if not under_any(p, removed_dirs)),
                *done.removed_dirs,
                *done.dirs_added,
            ]
        )
        # Written (and synced) before publishing: a commit that dies after its entry
        # landed but before the index records it is settled from this at the next lock
        # (see _recover_commit); else its files would look changed and be published
        # again, over whatever other writers committed meanwhile.
        write_commit_journal(
            self.meta_dir / COMMIT_JOURNAL_FILE,
            ops,
            base=index.base,
            known_head=self._known_head,
            writer=self.writer.id,
            done=done,
        )
        if large:
            _release_freed_memory()
        seq = self.repo.publish(
            ops, index.base, message, known_head=self._known_head, writer=self.writer
        )
        self._known_head = seq
        result = CommitResult(
            seq,
            files=len(puts),
            deleted=len(file_deletes) + len(rmdirs),
            bytes=sum(r.size for r, _, _ in puts.values()),
            sent_bytes=sent_bytes,
            deferred=tuple(deferred),
            skipped=tuple(skipped),
        )
        del ops  # the index holds the records from here on
        if large:
            _release_freed_memory()  # the log entry's encoding, before the index grows
        self._record_published(seq, done)
        done.puts.clear()
        self._save_index()
        self._drop_journal(COMMIT_JOURNAL_FILE)
        return result

    def _dirs_left_empty(
        self,
        scan: ScanResult,
        file_deletes: list[str],
        gone_dirs: set[str],
        puts: dict[str, Put],
        never_had: set[str],
    ) -> list[str]:
        """Directories still here that only files implied in the volume, and that no file
        or explicit directory of the volume keeps once this commit's deletions apply (the
        files this copy never had do not count: it cannot see them keep anything)."""
        index = self.index
        here = (index.dirs - scan.dirs_removed) | scan.dirs_added
        candidates = {
            a
            for p in [*file_deletes, *gone_dirs]
            for a in paths.ancestors(p)
            if a in here and a not in index.explicit_dirs and a not in scan.dirs_added
        }
        if not candidates:
            return []
        deleted = set(file_deletes) | never_had | set(index.without_record())
        kept = [p for p in index.paths() if p not in deleted]
        kept += list(puts)
        kept += [d for d in index.explicit_dirs | scan.dirs_added if d not in gone_dirs]
        filled = {a for p in kept for a in paths.ancestors(p)}
        return sorted(candidates - filled)

    def _deleted_by_content(self, file_deletes: list[str]) -> dict[str, FileRecord]:
        """The records of the files this commit deletes, by content id."""
        found: dict[str, FileRecord] = {}
        for rel in file_deletes:
            entry = self.index.entry(rel)
            if entry is not None and entry.record is not None:
                found.setdefault(entry.record.hash, entry.record)
        return found

    def _implied_only_by_hidden(self, scan: ScanResult, never_had: set[str]) -> set[str]:
        """Directories here, known to the volume, that only files this copy never had or
        explicit directories it does not have imply (a local directory or file stands
        where they go): they were not the volume's as this copy saw it, so it made them."""
        index = self.index
        hidden_dirs = index.kept_out_dirs()
        if not never_had and not hidden_dirs:
            return set()
        seen_explicit = index.explicit_dirs - hidden_dirs
        candidates = {
            a
            for p in never_had | hidden_dirs
            for a in paths.ancestors(p)
            if a in index.dirs and a not in scan.dirs_removed and a not in seen_explicit
        }
        if not candidates:
            return set()
        return candidates - index.implied_dirs(except_files=never_had, except_dirs=hidden_dirs)

    def _record_published(self, seq: int, done: Published) -> None:
        """Bring the index up to a commit of this copy that landed at ``seq``; applying
        it twice changes nothing."""
        index = self.index
        if seq == index.base + 1:
            # Nobody published in between: the copy now matches the volume at seq, and
            # the next commit need not probe the log positions this one took.
            index.base = seq
        elif seq > index.base:
            index.ahead = max(index.ahead, seq)
        for p in done.gone:
            index.drop(p)
        # A directory the volume has explicitly that this copy never had stays in the
        # volume (the commit does not remove it), and so do the explicit ones holding it:
        # still recorded, the next reload makes them here.
        kept_out = index.kept_out_dirs()
        stays = kept_out | {
            a for d in kept_out for a in paths.ancestors(d) if a in index.explicit_dirs
        }
        for d in done.removed_dirs:
            index.dirs = {x for x in index.dirs if not paths.is_under(x, d)}
            index.explicit_dirs = {
                x for x in index.explicit_dirs if x in stays or not paths.is_under(x, d)
            }
        index.dirs.update(done.dirs_added)
        index.explicit_dirs.update(done.dirs_added)
        if done.puts:
            # A file put where the volume has a directory replaces that directory and
            # everything under it (one this copy kept a local file over: not on disk here,
            # but still on record as the volume's until now).
            known = index.dirs | index.explicit_dirs
            known.update(a for d in index.explicit_dirs for a in paths.ancestors(d))
            for rel in [rel for rel in done.puts if rel in known]:
                index.dirs = {x for x in index.dirs if not paths.is_under(x, rel)}
                index.explicit_dirs = {x for x in index.explicit_dirs if not paths.is_under(x, rel)}
        content = index.known_content()
        # A large commit drops the table instead (made again when next needed): noting
        # every file would hold it beside the records while the index is saved.
        many = len(done.puts) > _NOTE_AT_MOST
        if many:
            content.forget()
        for rel, (record, sig, racy) in done.puts.items():
            entry = IndexEntry(record, _sharing(as_stat_key(sig), record), racy)
            index.put(rel, entry)
            if not many:
                content.note(rel, entry)
            index.dirs.update(paths.ancestors(rel))

    def _recover_commit(self) -> None:
        """Settle a commit that stopped after writing its journal (killed, or failed).

        If its entry is in the log (the same operations, after the base it was made on),
        the index records it as a finished commit would have; otherwise nothing was
        published and the next commit publishes the same changes.
        """
        journal = read_commit_journal(self.meta_dir / COMMIT_JOURNAL_FILE)
        if journal is None:
            return
        done = journal.done
        landed = None
        # A commit that landed before the pruning horizon is out of reach: it is taken as
        # not landed, so its changes stay local changes (never lost). The horizon's own
        # entry is retained history, so the search starts right before it.
        writer, ops = journal.writer, journal.ops
        for seq, entry in self.repo.entries_after(max(journal.start, self.repo.horizon() - 1)):
            if (writer is None or entry.writer.id == writer) and ops_payload(entry.ops) == ops:
                landed = seq
                break
        self._load_saved_index()
        if landed is not None:
            self._known_head = max(self._known_head, landed)
            self._record_published(landed, done)
            self._save_index()
        self._drop_journal(COMMIT_JOURNAL_FILE)

    def _upload(
        self, candidates: dict[str, Found]
    ) -> tuple[dict[str, Uploaded], dict[str, bytes], set[str]]:
        """Read and send the candidates. Returns what was sent, the stat each file had when
        opened (as a packed signature: a whole stat is ten times its size), and the paths
        found not to be regular files (never read)."""
        unreadable: set[str] = set()
        if not candidates:
            return {}, {}, unreadable
        root_fd = fsops.open_root(str(self.root))
        stats: dict[str, bytes] = {}

        def opener(rel: str) -> Any:
            def open_it() -> tuple[IO[bytes], os.stat_result]:
                fd = fsops.open_file(root_fd, rel)
                st = os.fstat(fd)
                stats[rel] = packed_sig(st)
                return cast(IO[bytes], os.fdopen(fd, "rb", buffering=0)), st

            return open_it

        sizes = {rel: found_key(found)[0] for rel, found in candidates.items()}
        small = sorted(rel for rel, size in sizes.items() if size <= PACK_THRESHOLD)
        large = [rel for rel, size in sizes.items() if size > PACK_THRESHOLD]
        del sizes
        # Each read takes its own stat: the scan's (tens of MiB at 100,000 files) go now,
        # before the reads fill memory with theirs.
        candidates.clear()

        def read_small(rels: list[str]) -> SmallReader:
            return lambda: self._read_small(root_fd, rels, stats)

        meta = self.repo.meta
        try:
            with ContentWriter(
                self.repo.store,
                self.repo.keys,
                meta.chunk_size,
                known=self.index.known_content(),
                concurrency=self.concurrency,
            ) as writer:
                # Large files first, so workers send them while this thread reads the
                # small ones in batches (sorted: a batch spans few directories).
                futures = {rel: writer.add(opener(rel)) for rel in large}
                batches = [
                    writer.add_small_files(read_small(small[i : i + SMALL_BATCH]))
                    for i in range(0, len(small), SMALL_BATCH)
                ]
                writer.finish()
                results: dict[str, Uploaded] = {}
                failures: dict[str, BaseException | None] = {}
                for batch in batches:
                    done = batch.result()
                    results.update(done.uploaded)
                    failures.update(done.errors)
                for rel, future in futures.items():
                    failures[rel] = future.exception()
                    if failures[rel] is None:
                        results[rel] = future.result()
                for rel, exc in failures.items():
                    if isinstance(exc, fsops.NotRegularFile):
                        unreadable.add(rel)  # replaced by a FIFO, socket or device
                        continue
                    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
                        continue  # removed or replaced since the scan: the next commit sees it
                    if exc is not None:
                        raise exc
        finally:
            os.close(root_fd)
        return results, stats, unreadable

    @staticmethod
    def _read_small(
        root_fd: int, rels: list[str], stats: dict[str, bytes]
    ) -> Iterator[tuple[str, bytes | BaseException, bool]]:
        """Read small files, each directory opened once (without symlinks) per batch."""
        dirs: dict[str, int] = {}
        try:
            for rel in rels:
                head, _, name = rel.rpartition("/")
                try:
                    dir_fd = dirs.get(head)
                    if dir_fd is None:
                        dir_fd = dirs[head] = fsops.open_dir(root_fd, head)
                    fd = fsops.open_regular_at(dir_fd, name, rel)
                except OSError as exc:
                    yield rel, exc, False
                    continue
                try:
                    before = os.fstat(fd)
                    data = fsops.read_up_to(fd, PACK_THRESHOLD + 1)
                    after = os.fstat(fd)
                finally:
                    os.close(fd)
                stats[rel] = packed_sig(before)
                # A file that grew past the pack size since the scan changed meanwhile.
                stable = same_stat(before, after) and len(data) == before.st_size
                yield rel, data, stable and len(data) <= PACK_THRESHOLD
        finally:
            for dir_fd in dirs.values():
                os.close(dir_fd)


#: Files of a commit added one by one to the known content's table (see KnownContent).
_NOTE_AT_MOST = 4096


def _release_freed_memory() -> None:
    """Give the system back the heap memory freed so far. glibc keeps freed blocks of the
    heap for reuse, and after a large commit phase (16 MiB pack buffers, the encoded
    journal and log entry) that is tens of MiB the next phase, made of small objects
    Python keeps elsewhere, never reuses. A no-op where the C library has no
    malloc_trim."""
    import ctypes  # only large commits come here

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return
    trim(0)


def _sharing(key: SigTuple, record: FileRecord) -> SigTuple:
    """``key`` made of the record's own ints where they are equal (its size, its mtime as
    the ctime of a file not changed since it was written, its mode): after a commit of
    100,000 files the index then holds one int of each file's stat, not five."""
    size, mtime_ns, ino, ctime_ns, mode = key
    return (
        record.size if size == record.size else size,
        record.mtime_ns if mtime_ns == record.mtime_ns else mtime_ns,
        ino,
        record.mtime_ns if ctime_ns == record.mtime_ns else ctime_ns,
        record.mode if mode == record.mode else mode,
    )


def _outermost(dirs: set[str]) -> set[str]:
    return {d for d in dirs if not any(a in dirs for a in paths.ancestors(d))}
