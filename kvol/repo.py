"""One volume's data in a store: its metadata, commit log, checkpoints and content.

The commit protocol (DESIGN: Commit protocol) lives here. A commit is visible exactly
when its log entry exists; entries are created with ``put_if_absent`` at ``head + 1``
and a writer that loses a position tries the next one, so two writers of distinct files
both land, and the same path is last-write-wins by log order.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from kvol import codec, metrics
from kvol.content import DEFAULT_CHUNK_SIZE, ContentReader
from kvol.errors import CorruptData, NotFound
from kvol.layout import VolumeKeys, parse_seq
from kvol.model import (
    DeleteOp,
    Entry,
    FileRecord,
    Limits,
    MkdirOp,
    Op,
    PutOp,
    State,
    VolumeMeta,
    Writer,
)
from kvol.store import Store

log = logging.getLogger(__name__)

#: A checkpoint is written at every seq that is a multiple of this, so reading any state
#: replays at most this many entries.
CHECKPOINT_EVERY = 64
#: Objects younger than this are never collected: a commit may be about to publish them.
DEFAULT_GC_GRACE_SECONDS = 3600.0


def new_volume_id() -> str:
    return uuid.uuid4().hex


def this_writer() -> Writer:
    return Writer(id=_WRITER_ID, host=socket.gethostname(), pid=os.getpid())


_WRITER_ID = uuid.uuid4().hex[:16]


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
    #: Distinct writers that published in the last ``window`` seconds.
    writers_recent: int


@dataclass(frozen=True)
class GcReport:
    objects_seen: int
    objects_referenced: int
    objects_deleted: int
    bytes_deleted: int
    objects_kept_young: int


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
                self._meta = VolumeMeta.from_json(self.store.get(self.keys.meta))
            except NotFound as exc:
                raise NotFound(
                    f"volume {self.volume_id} does not exist in {self.store.url}"
                ) from exc
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
            return Entry.from_payload(codec.decode("entry", raw))
        except CorruptData as exc:
            raise CorruptData(f"log entry {seq} of volume {self.volume_id}: {exc}") from exc

    def entries_after(self, seq: int) -> Iterator[tuple[int, Entry]]:
        """Entries after ``seq`` in order, up to the head as it is while reading."""
        while True:
            entry = self.read_entry(seq + 1)
            if entry is None:
                return
            seq += 1
            yield seq, entry

    def head(self) -> int:
        """The newest published seq (0 for a volume with no commit)."""
        start = self.latest_checkpoint() or 0
        last = start
        for info in self.store.list(self.keys.log_prefix, start_after=self.keys.log(start)):
            seq = parse_seq(info.key.rsplit("/", 1)[-1])
            if seq is not None and seq == last + 1:
                last = seq
        return last

    def publish(
        self, ops: list[Op], base: int, message: str | None = None, *, known_head: int = 0
    ) -> int:
        """Publish one entry after ``base``; returns the seq it landed at.

        ``known_head``: a seq the caller knows is taken (the log has no gaps, so every
        position up to it is): probing starts after it instead of after ``base``.
        """
        entry = Entry(tuple(ops), time.time(), this_writer(), base, message)
        raw = codec.encode("entry", entry.to_payload())
        # Content is durable before the entry that refers to it.
        self.store.sync()
        seq = max(base, known_head) + 1
        while not self.store.put_if_absent(self.keys.log(seq), raw):
            metrics.COMMIT_CONFLICTS.inc()
            seq += 1
        if seq % CHECKPOINT_EVERY == 0:
            self._checkpoint_quietly(seq)
        return seq

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
        """The volume's files at ``seq`` (the head when None). Raises NotFound past the head."""
        checkpoint = self.latest_checkpoint(at_most=seq)
        state = self._load_checkpoint(checkpoint) if checkpoint else State()
        for at, entry in self.entries_after(state.seq):
            if seq is not None and at > seq:
                break
            state.apply(entry, at)
        if seq is not None and state.seq != seq:
            raise NotFound(f"volume {self.volume_id} has no commit {seq} (head is {state.seq})")
        return state

    def _load_checkpoint(self, seq: int) -> State:
        raw = self.store.get(self.keys.checkpoint(seq))
        state = State.from_payload(codec.decode("checkpoint", raw))
        if state.seq != seq:
            raise CorruptData(f"checkpoint {seq} holds the state of {state.seq}")
        return state

    def write_checkpoint(self, seq: int) -> None:
        state = self.state(seq)
        self.store.put_if_absent(
            self.keys.checkpoint(seq), codec.encode("checkpoint", state.to_payload())
        )

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
        """Commits, newest first."""
        seqs = [
            s
            for s in (
                parse_seq(i.key.rsplit("/", 1)[-1]) for i in self.store.list(self.keys.log_prefix)
            )
            if s is not None
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
                    paths_deleted=sum(1 for op in entry.ops if isinstance(op, DeleteOp)),
                    bytes_written=sum(op.record.size for op in puts),
                )
            )
        return result

    def restore(self, seq: int, message: str | None = None) -> int:
        """Publish a commit that makes the head equal to the state at ``seq``."""
        target = self.state(seq)
        head = self.state()
        ops: list[Op] = []
        for path in sorted(set(head.files) - set(target.files)):
            ops.append(DeleteOp(path))
        for path in sorted(head.dirs - target.all_dirs()):
            ops.append(DeleteOp(path))
        for path in sorted(target.dirs - head.dirs):
            ops.append(MkdirOp(path))
        for path, record in sorted(target.files.items()):
            if head.files.get(path) != record:
                ops.append(PutOp(path, record))
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
            writers.add(entry.writer.id)
            seq -= 1
        return RepoStats(len(state.files), state.total_bytes, state.seq, last_time, len(writers))

    # -- garbage collection -------------------------------------------------------------

    def referenced_objects(self) -> set[str]:
        """Keys of every content object any commit in the history refers to."""
        refs: set[str] = set()

        def note(record: FileRecord) -> None:
            for part in record.parts:
                refs.add(self.keys.content(part.kind, part.obj))

        for info in self.store.list(self.keys.checkpoint_prefix):
            seq = parse_seq(info.key.rsplit("/", 1)[-1])
            if seq is not None:
                for record in self._load_checkpoint(seq).files.values():
                    note(record)
        for _seq, entry in self.entries_after(0):
            for op in entry.ops:
                if isinstance(op, PutOp):
                    note(op.record)
        return refs

    def gc(
        self, grace_seconds: float = DEFAULT_GC_GRACE_SECONDS, dry_run: bool = False
    ) -> GcReport:
        """Delete content objects no commit refers to and older than ``grace_seconds``.

        An object a commit has uploaded but not yet published is unreferenced, and young:
        the grace period is what keeps it. Commits retry uploads of what they find missing,
        so the grace only has to outlast one commit.
        """
        # List objects before reading references: anything published after the reference
        # scan was uploaded after the listing started, so it is young and kept.
        objects = list(self.store.list(self.keys.blob_prefix)) + list(
            self.store.list(self.keys.pack_prefix)
        )
        refs = self.referenced_objects()
        cutoff = time.time() - grace_seconds
        deleted = bytes_deleted = young = 0
        for info in objects:
            if info.key in refs:
                continue
            if info.mtime > cutoff:
                young += 1
                continue
            if not dry_run:
                self.store.delete(info.key)
            deleted += 1
            bytes_deleted += info.size
        return GcReport(len(objects), len(refs), deleted, bytes_deleted, young)

    def destroy(self) -> None:
        """Remove every object of the volume, metadata first so nobody opens it meanwhile."""
        self.store.delete(self.keys.meta)
        for info in list(self.store.list(self.keys.prefix)):
            self.store.delete(info.key)
