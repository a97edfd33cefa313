"""Garbage collection of one volume's content objects: finding what the log and its
checkpoints refer to, and deleting the rest once it is old enough that no commit can be
about to publish it (the renewal protocol of :mod:`kvol.content`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kvol import content, grace
from kvol.checkpoints import Checkpoints
from kvol.commit_log import CommitLog
from kvol.errors import InvalidArgument, NotFound
from kvol.horizons import Horizons
from kvol.layout import VolumeKeys, parse_seq
from kvol.model import Entry, FileRecord, PutOp
from kvol.store import Store


def check_grace(grace: object) -> float:
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


class ContentCollector:
    """Garbage collection of one volume's content."""

    def __init__(
        self,
        store: Store,
        keys: VolumeKeys,
        commit_log: CommitLog,
        horizons: Horizons,
        checkpoints: Checkpoints,
    ) -> None:
        self.store = store
        self.keys = keys
        self._log = commit_log
        self._horizons = horizons
        self._checkpoints = checkpoints

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

        horizon = self._horizons.current()
        if horizon:
            # Where retained history begins: never deleted while it is the horizon.
            for record in self._checkpoints.load(horizon).files.values():
                note(record)
        for info in self.store.list(self.keys.checkpoint_prefix):
            seq = parse_seq(info.key.rsplit("/", 1)[-1])
            if seq is not None and seq != horizon:
                try:
                    state = self._checkpoints.load(seq)
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
                    entry = self._log.read_entry(seq)
                    if entry is not None:  # else pruned since the listing
                        note_entry(entry)
        for _seq, entry in self._log.entries_after(horizon):
            note_entry(entry)
        return refs

    def collect(
        self, grace_seconds: float = grace.DEFAULT_GC_GRACE_SECONDS, dry_run: bool = False
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
        grace = check_grace(grace_seconds)
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
