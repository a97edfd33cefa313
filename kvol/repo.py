"""One volume's data in a store: its metadata, commit log, checkpoints and content.

The commit protocol (DESIGN: Commit protocol) lives here. A commit is visible exactly
when its log entry exists; entries are created with ``put_if_absent`` at ``head + 1``
and a writer that loses a position learns the new head from one listing of the log and
tries the position after it, so two writers of distinct files both land, and the same
path is last-write-wins by log order.

Writers take positions in order, so the log never has a gap: a missing entry with later
ones present is damage, reported as CorruptData by every reader (never taken for the end
of the history), and garbage collection refuses to run on such a log. A writer whose
base is not in the store (restored from an older backup) refuses to publish
(StoreBehind). Each entry names the volume and position it was written for, and each
checkpoint its volume, so a copied, swapped or replayed object is rejected; volumes of
metadata format 1 (older versions) may hold entries that do not name them.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

from kvol import codec, content, gcpause, metrics
from kvol.content import DEFAULT_CHUNK_SIZE, ContentReader
from kvol.errors import (
    CorruptData,
    HistoryPruned,
    InvalidArgument,
    KvolError,
    NotFound,
    StaleBase,
    StoreBehind,
)
from kvol.layout import VolumeKeys, parse_seq
from kvol.model import (
    VOLUME_FORMAT,
    DeleteOp,
    Entry,
    FileRecord,
    Limits,
    MkdirOp,
    Op,
    PutOp,
    RmdirOp,
    State,
    UnlinkOp,
    VolumeMeta,
    Writer,
)
from kvol.store import Store

log = logging.getLogger(__name__)

#: A checkpoint is written at every seq that is a multiple of this, so reading any state
#: replays at most this many entries.
CHECKPOINT_EVERY = 64
#: Objects younger than this are never collected: a commit may be about to publish them.
#: Never below :func:`kvol.content.min_gc_grace` (see the renewal protocol there).
DEFAULT_GC_GRACE_SECONDS = 3600.0


def _check_grace(grace: object) -> float:
    shortest = content.min_gc_grace()
    if (
        not isinstance(grace, int | float)
        or isinstance(grace, bool)
        or not math.isfinite(grace)
        or grace < shortest
    ):
        raise InvalidArgument(
            f"the gc grace must be a number of seconds of at least {shortest:g} (commits "
            f"renew what they reuse when it is {content.REFRESH_AFTER_SECONDS:g}s old, and "
            f"may take as long again to publish), not {grace!r}"
        )
    return float(grace)


class Unreferenced:
    """Content keys of one volume that no entry refers to (as of a reading of the log)."""

    def __init__(self, keys: VolumeKeys, refs: set[str]) -> None:
        self._prefixes = (keys.blob_prefix, keys.pack_prefix)
        self._refs = refs

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.startswith(self._prefixes) and key not in self._refs


def _deepest_first(path: str) -> tuple[int, str]:
    return (-path.count("/"), path)


def new_volume_id() -> str:
    import uuid  # only here: a volume is created once

    return uuid.uuid4().hex


def this_writer() -> Writer:
    return Writer(id=_WRITER_ID, host=os.uname().nodename, pid=os.getpid())


_WRITER_ID = secrets.token_hex(8)


@dataclass(frozen=True)
class CommitInfo:
    seq: int
    time: float
    writer: Writer
    message: str | None
    files_written: int
    paths_deleted: int
    bytes_written: int


@dataclass(frozen=True)
class RepoStats:
    files: int
    bytes: int
    head: int
    last_commit_time: float | None
    #: Distinct writers that published in the last ``window`` seconds: pods (whatever
    #: number of copies each used), and other working copies.
    writers_recent: int


@dataclass(frozen=True)
class GcReport:
    objects_seen: int
    objects_referenced: int
    objects_deleted: int
    bytes_deleted: int
    objects_kept_young: int
    #: Keys of the content objects deleted (or that would be, in a dry run).
    deleted: tuple[str, ...] = ()
    #: Leftovers of writes killed halfway, removed from the store (none in a dry run).
    temporaries_deleted: int = 0
    temporary_bytes_deleted: int = 0


class Repo:
    """Access to one volume in a store. Cheap to create; safe to share between threads."""

    def __init__(self, store: Store, volume_id: str, meta: VolumeMeta | None = None) -> None:
        self.store = store
        self.volume_id = volume_id
        self.keys = VolumeKeys(volume_id)
        self._meta = meta

    # -- creation and metadata ------------------------------------------------------------

    @classmethod
    def create(
        cls,
        store: Store,
        *,
        version: int = 2,
        limits: Limits | None = None,
        volume_id: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Repo:
        """Write a new volume's metadata. Idempotent for the same id and settings."""
        meta = VolumeMeta(
            id=volume_id or new_volume_id(),
            version=version,
            limits=Limits.for_version(version).merged(limits),
            created=time.time(),
            chunk_size=chunk_size,
            format=VOLUME_FORMAT,
        )
        repo = cls(store, meta.id)
        if not store.put_if_absent(repo.keys.meta, meta.to_json()):
            return cls(store, meta.id)  # created before (a retry): keep what is there
        repo._meta = meta
        return repo

    @property
    def meta(self) -> VolumeMeta:
        if self._meta is None:
            try:
                meta = VolumeMeta.from_json(self.store.get(self.keys.meta))
            except NotFound as exc:
                raise NotFound(
                    f"volume {self.volume_id} does not exist in {self.store.url}"
                ) from exc
            if meta.id != self.volume_id:
                raise CorruptData(
                    f"the metadata of volume {self.volume_id} names volume {meta.id} "
                    "(copied from another volume, or tampered with)"
                )
            self._meta = meta
        return self._meta

    def exists(self) -> bool:
        return self.store.exists(self.keys.meta)

    # -- the log --------------------------------------------------------------------------

    def read_entry(self, seq: int) -> Entry | None:
        try:
            raw = self.store.get(self.keys.log(seq))
        except NotFound:
            return None
        try:
            entry = Entry.from_payload(codec.decode("entry", raw))
            self._check_binding("log entry", entry.volume, entry.seq, seq)
        except CorruptData as exc:
            raise CorruptData(f"log entry {seq} of volume {self.volume_id}: {exc}") from exc
        return entry

    def _check_binding(self, what: str, volume: object, bound_seq: int | None, seq: int) -> None:
        """An entry or checkpoint is valid only where it was written: its volume and seq."""
        if (volume is None or bound_seq is None) and self.meta.binds_entries:
            raise CorruptData(f"{what} does not name its volume and position")
        if volume is not None and volume != self.volume_id:
            raise CorruptData(f"{what} belongs to volume {volume!r}")
        if bound_seq is not None and bound_seq != seq:
            raise CorruptData(f"{what} was written for position {bound_seq}")

    def entries_after(self, seq: int, until: int | None = None) -> Iterator[tuple[int, Entry]]:
        """Entries after ``seq`` in order, up to ``until`` or else the head as it is while
        reading.

        Raises CorruptData at a gap (an entry missing with a later one present): the log
        never has one, and stopping there would hide every commit after it.
        """
        while until is None or seq < until:
            entry = self.read_entry(seq + 1)
            if entry is None:
                if not self._gap_at(seq + 1):
                    return
                # Published between the read and the check: go on from it.
                entry = self.read_entry(seq + 1)
                if entry is None:
                    raise self._gap_error(seq + 1)
            seq += 1
            yield seq, entry

    def _gap_at(self, missing: int) -> bool:
        """Does an entry exist past ``missing`` (which was just read as absent)?

        Writers take positions in order (each one after finding the one before taken),
        so a later entry means ``missing`` exists by now or was lost.
        """
        for info in self.store.list(self.keys.log_prefix, start_after=self.keys.log(missing)):
            if parse_seq(info.key.rsplit("/", 1)[-1]) is not None:
                return True
        return False

    def check_not_behind(self, seq: int) -> None:
        """Raise StoreBehind if commit ``seq``, which the caller has seen, is not in the
        store, and CorruptData if the log has a gap right after it."""
        self._require_seen(seq)
        if self._gap_at(seq + 1) and not self.store.exists(self.keys.log(seq + 1)):
            raise self._gap_error(seq + 1)

    def _require_seen(self, seq: int) -> None:
        """Raise StoreBehind if commit ``seq``, which the caller has seen, is not in the store
        (StaleBase if it was pruned)."""
        if seq > 0 and not self.store.exists(self.keys.log(seq)):
            if seq < self.horizon():
                raise self._stale_base(seq)
            raise StoreBehind(
                f"volume {self.volume_id} in {self.store.url} has no commit {seq}, which "
                "this writer has seen: the store is behind it (restored from an older "
                "backup?). Nothing was published; a new working copy starts from what the "
                "store holds"
            )

    def _gap_error(self, missing: int) -> KvolError:
        horizon = self.horizon()
        if missing < horizon:
            # Before the horizon entries may be gone: pruned, not lost.
            return HistoryPruned(
                f"commit {missing} of volume {self.volume_id} was pruned by its retention "
                f"policy: retained history begins at commit {horizon}"
            )
        return CorruptData(
            f"the log of volume {self.volume_id} has a gap: entry {missing} is missing but "
            "later entries exist (lost or deleted from the store); `kvol volume fsck` "
            "reports what it affects"
        )

    # -- retained history (pruned by kvol.retention) ------------------------------------------

    @property
    def horizon_prefix(self) -> str:
        return self.keys.prefix + "horizon/"

    def horizons(self) -> list[tuple[int, float]]:
        """Every pruning horizon the store lists: (seq, when it was recorded by the store's
        clock), oldest first. Each is created once (put-if-absent) and never rewritten."""
        found = []
        for info in self.store.list(self.horizon_prefix):
            seq = parse_seq(info.key.rsplit("/", 1)[-1])
            if seq is not None:
                found.append((seq, info.mtime))
        return sorted(found)

    def horizon(self) -> int:
        """Where retained history begins (0: nothing was ever pruned). Commits before it
        are out of history: their entries may still be in the store for a while, but no
        reader uses them and no writer may publish on top of them."""
        return max((seq for seq, _ in self.horizons()), default=0)

    def _stale_base(self, base: int) -> StaleBase:
        return StaleBase(
            f"this working copy is based on commit {base} of volume {self.volume_id}, which "
            f"its retention policy pruned (retained history begins at commit "
            f"{self.horizon()}): nothing was published. Reload it (local changes are kept), "
            "then commit again"
        )

    def head(self) -> int:
        """The newest published seq (0 for a volume with no commit). Raises CorruptData
        if the log has a gap."""
        return self._last_after(self.latest_checkpoint() or 0)

    def publish(
        self,
        ops: list[Op],
        base: int,
        message: str | None = None,
        *,
        known_head: int = 0,
        writer: Writer | None = None,
    ) -> int:
        """Publish one entry after ``base``; returns the seq it landed at. ``writer``:
        who the entry names (by default this process).

        ``known_head``: a seq the caller knows is taken (the log has no gaps, so every
        position up to it is): the search for a free position starts after it instead of
        after ``base``.

        Raises StoreBehind if that position is not in the store: the caller has seen
        commits the store lost, and an entry after them would be invisible behind a gap.

        Raises StaleBase if ``base`` is before the pruning horizon: the stale-writer guard
        (docs/data-safety.md, Retention).
        """
        entry = Entry(tuple(ops), time.time(), writer or this_writer(), base, message)
        start = max(base, known_head)
        self._require_seen(start)
        objects = {
            self.keys.content(part.kind, part.obj)
            for op in ops
            if isinstance(op, PutOp)
            for part in op.record.parts
        }
        # Content is durable before the entry that refers to it.
        self.store.sync()
        # Stale-writer guard, checked as late as the renewal below: content this entry
        # reuses from the state at its base is kept until at least a grace period after
        # a horizon passes that base (kvol.retention), far longer than a publish takes.
        if base < self.horizon():
            raise self._stale_base(base)
        # Just before publishing: whatever this commit stored or reused long ago is dated
        # anew, so collection cannot take it before the entry lands (kvol.content).
        content.renew_before_publish(self.store, objects)
        seq = start + 1
        while True:
            if self.store.exists(self.keys.log(seq + 1)):
                # Writers take positions in order, so an entry after a free position means
                # the position was lost, not free: filling it would hide the lost commit
                # for good.
                if not self.store.exists(self.keys.log(seq)):
                    raise self._gap_error(seq)
                # Others published since: one listing finds the head however far it moved,
                # instead of a probe per entry (losing a position by one, the usual race,
                # needs none). The new position is checked as this one was.
                seq = self._last_after(seq + 1) + 1
                continue
            # Each position gets its own bytes: the entry names the seq it was written for.
            if self.store.put_if_absent(self.keys.log(seq), self.entry_bytes(entry, seq)):
                break
            metrics.COMMIT_CONFLICTS.inc()
            seq += 1
        content.published(self.store, objects)
        if seq % CHECKPOINT_EVERY == 0:
            self._checkpoint_quietly(seq)
        return seq

    def _last_after(self, taken: int) -> int:
        """The newest entry of the log, from one listing of the entries after ``taken`` (a
        position known to be taken, or 0): names are zero-padded, so they list in seq order
        and a single request returns a page of them (a thousand on S3).

        Raises CorruptData at a gap: writers take positions in order, so an entry after a
        missing one means it was lost, and taking its position would hide that for good.
        """
        last = taken
        while True:
            missing = None
            for info in self.store.list(self.keys.log_prefix, start_after=self.keys.log(last)):
                seq = parse_seq(info.key.rsplit("/", 1)[-1])
                if seq is None:
                    continue
                if seq != last + 1:
                    missing = last + 1
                    break
                last = seq
            if missing is None:
                return last
            # It may have landed after the listing passed its name: go on from it.
            if not self.store.exists(self.keys.log(missing)):
                raise self._gap_error(missing)
            last = missing

    # -- state ------------------------------------------------------------------------------

    def latest_checkpoint(self, at_most: int | None = None) -> int | None:
        best: int | None = None
        for info in self.store.list(self.keys.checkpoint_prefix):
            seq = parse_seq(info.key.rsplit("/", 1)[-1])
            if (
                seq is not None
                and (at_most is None or seq <= at_most)
                and (best is None or seq > best)
            ):
                best = seq
        return best

    def state(self, seq: int | None = None) -> State:
        """The volume's files at ``seq`` (the head when None). Raises NotFound past the head,
        HistoryPruned before the pruning horizon."""
        if seq is not None:
            horizon = self.horizon()
            if seq < horizon:
                raise HistoryPruned(
                    f"commit {seq} of volume {self.volume_id} was pruned by its retention "
                    f"policy: retained history begins at commit {horizon}"
                )
        checkpoint = self.latest_checkpoint(at_most=seq)
        with gcpause.paused():  # a few objects per file, none in a cycle
            state = self._load_checkpoint(checkpoint) if checkpoint else State()
            for at, entry in self.entries_after(state.seq, until=seq):
                state.apply(entry, at)
        if seq is not None and state.seq != seq:
            raise NotFound(f"volume {self.volume_id} has no commit {seq} (head is {state.seq})")
        return state

    def _load_checkpoint(self, seq: int) -> State:
        raw = self.store.get(self.keys.checkpoint(seq))
        payload = codec.decode("checkpoint", raw)
        state = State.from_payload(payload)
        if state.seq != seq:
            raise CorruptData(f"checkpoint {seq} holds the state of {state.seq}")
        try:
            self._check_binding("checkpoint", payload.get("volume"), state.seq, seq)
        except CorruptData as exc:
            raise CorruptData(f"checkpoint {seq} of volume {self.volume_id}: {exc}") from exc
        return state

    def write_checkpoint(self, seq: int) -> None:
        state = self.state(seq)
        self.store.put_if_absent(self.keys.checkpoint(seq), self.checkpoint_bytes(state))

    def checkpoint_bytes(self, state: State) -> bytes:
        """The stored form of a checkpoint of this volume (bound to it)."""
        payload = state.to_payload()
        payload["volume"] = self.volume_id
        return codec.encode("checkpoint", payload)

    def entry_bytes(self, entry: Entry, seq: int) -> bytes:
        """The stored form of ``entry`` at ``seq`` of this volume (bound to both)."""
        bound = entry.bound(self.volume_id, seq)
        payload = replace(bound, ops=()).to_payload()
        # The operations' lists are made a slice at a time as they are encoded: for a
        # commit of 100,000 files, all at once they would be tens of MiB.
        payload["ops"] = (
            replace(bound, ops=bound.ops[i : i + codec.SLICE]).to_payload()["ops"]
            for i in range(0, len(bound.ops), codec.SLICE)
        )
        return codec.encode("entry", payload)

    def _checkpoint_quietly(self, seq: int) -> None:
        # A missing checkpoint only costs readers time; the commit already landed.
        try:
            self.write_checkpoint(seq)
        except Exception as exc:
            log.warning("could not write checkpoint %d of volume %s: %s", seq, self.volume_id, exc)

    def reader(self) -> ContentReader:
        return ContentReader(self.store, self.keys)

    # -- history ----------------------------------------------------------------------------

    def history(self, limit: int | None = None) -> list[CommitInfo]:
        """Commits of the retained history (from :meth:`horizon` on), newest first."""
        horizon = self.horizon()
        seqs = [
            s
            for s in (
                parse_seq(i.key.rsplit("/", 1)[-1]) for i in self.store.list(self.keys.log_prefix)
            )
            if s is not None and s >= horizon
        ]
        seqs.sort(reverse=True)
        if limit is not None:
            seqs = seqs[:limit]
        result = []
        for seq in seqs:
            entry = self.read_entry(seq)
            if entry is None:
                continue
            puts = [op for op in entry.ops if isinstance(op, PutOp)]
            result.append(
                CommitInfo(
                    seq=seq,
                    time=entry.time,
                    writer=entry.writer,
                    message=entry.message,
                    files_written=len(puts),
                    paths_deleted=sum(
                        1 for op in entry.ops if isinstance(op, DeleteOp | UnlinkOp | RmdirOp)
                    ),
                    bytes_written=sum(op.record.size for op in puts),
                )
            )
        return result

    def restore(self, seq: int, message: str | None = None) -> int:
        """Publish a commit that makes the head equal to the state at ``seq``."""
        target = self.state(seq)
        head = self.state()
        ops: list[Op] = []
        # A deletion names what this writer saw at the head it restores over, file by
        # file, then directories deepest first: a file another writer adds meanwhile
        # under one of them survives, and so does its directory.
        for path in sorted(set(head.files) - set(target.files)):
            ops.append(UnlinkOp(path))
        for path in sorted(head.dirs - target.all_dirs(), key=_deepest_first):
            ops.append(RmdirOp(path))
        for path in sorted(target.dirs - head.dirs):
            ops.append(MkdirOp(path))
        for path, record in sorted(target.files.items()):
            if head.files.get(path) != record:
                ops.append(PutOp(path, record))
        # The records restored come from commit ``seq``: the stale-writer guard applies to
        # it as to a base, checked as late (nothing is uploaded in between).
        horizon = self.horizon()
        if seq < horizon:
            raise HistoryPruned(
                f"commit {seq} of volume {self.volume_id} was pruned by its retention "
                f"policy while it was being restored: retained history begins at commit "
                f"{horizon}; nothing was published"
            )
        return self.publish(ops, head.seq, message or f"restore of commit {seq}")

    def stats(self, writers_window: float = 300.0) -> RepoStats:
        state = self.state()
        last_time: float | None = None
        writers: set[str] = set()
        cutoff = time.time() - writers_window
        seq = state.seq
        # Walk back through recent entries only: enough for "who wrote lately".
        while seq > 0:
            entry = self.read_entry(seq)
            if entry is None:
                break
            if last_time is None:
                last_time = entry.time
            if entry.time < cutoff:
                break
            writers.add(f"pod:{entry.writer.pod}" if entry.writer.pod else entry.writer.id)
            seq -= 1
        return RepoStats(len(state.files), state.total_bytes, state.seq, last_time, len(writers))

    # -- garbage collection -------------------------------------------------------------

    def referenced_objects(self) -> set[str]:
        """Keys of every content object any commit in the history refers to, and any
        entry or checkpoint before the pruning horizon still in the store: a writer may
        reuse their content until prune deletes them (see kvol.retention)."""
        refs: set[str] = set()

        def note(record: FileRecord) -> None:
            for part in record.parts:
                refs.add(self.keys.content(part.kind, part.obj))

        def note_entry(entry: Entry) -> None:
            for op in entry.ops:
                if isinstance(op, PutOp):
                    note(op.record)

        horizon = self.horizon()
        if horizon:
            # Where retained history begins: never deleted while it is the horizon.
            for record in self._load_checkpoint(horizon).files.values():
                note(record)
        for info in self.store.list(self.keys.checkpoint_prefix):
            seq = parse_seq(info.key.rsplit("/", 1)[-1])
            if seq is not None and seq != horizon:
                try:
                    state = self._load_checkpoint(seq)
                except NotFound:
                    if seq < horizon:
                        continue  # pruned since the listing
                    raise
                for record in state.files.values():
                    note(record)
        if horizon:
            for info in self.store.list(self.keys.log_prefix):
                seq = parse_seq(info.key.rsplit("/", 1)[-1])
                if seq is not None and seq >= horizon:
                    break  # names list in seq order
                if seq is not None:
                    entry = self.read_entry(seq)
                    if entry is not None:  # else pruned since the listing
                        note_entry(entry)
        for _seq, entry in self.entries_after(horizon):
            note_entry(entry)
        return refs

    def gc(
        self, grace_seconds: float = DEFAULT_GC_GRACE_SECONDS, dry_run: bool = False
    ) -> GcReport:
        """Delete content objects no commit refers to and older than ``grace_seconds``,
        and leftovers of writes killed halfway older than that.

        An object a commit has uploaded but not yet published is unreferenced, and young:
        the grace period is what keeps it, with the renewal protocol of
        :mod:`kvol.content` (which is why a grace below
        :func:`kvol.content.min_gc_grace` is refused). Ages are taken by the store's
        clock as it was when the reading of the log started, and each object is looked at
        again right before it is deleted. Refuses (CorruptData) to run on a log it cannot
        read whole.
        """
        grace = _check_grace(grace_seconds)
        cutoff = self.store.now(max_age=0) - grace
        # List objects before reading references: anything published after the reference
        # scan was uploaded or renewed after the cutoff, so it is young and kept.
        objects = list(self.store.list(self.keys.blob_prefix)) + list(
            self.store.list(self.keys.pack_prefix)
        )
        refs = self.referenced_objects()
        deleted: list[str] = []
        bytes_deleted = young = 0
        for info in objects:
            if info.key in refs:
                continue
            if info.mtime >= cutoff:
                young += 1
                continue
            if dry_run:
                deleted.append(info.key)
                bytes_deleted += info.size
                continue
            gone = self.store.delete_if_older(info.key, cutoff)
            if gone is None:
                young += 1  # renewed (or removed) since the listing
                continue
            deleted.append(info.key)
            bytes_deleted += gone.size
        temporaries = (
            (0, 0)
            if dry_run
            else self.store.remove_temporaries(cutoff, Unreferenced(self.keys, refs))
        )
        return GcReport(
            len(objects),
            len(refs),
            len(deleted),
            bytes_deleted,
            young,
            deleted=tuple(deleted),
            temporaries_deleted=temporaries[0],
            temporary_bytes_deleted=temporaries[1],
        )

    def destroy(self) -> None:
        """Remove every object of the volume, metadata first so nobody opens it meanwhile."""
        self.store.delete(self.keys.meta)
        for info in list(self.store.list(self.keys.prefix)):
            self.store.delete(info.key)
