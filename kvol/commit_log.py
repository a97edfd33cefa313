"""The commit log of one volume: reading its entries, finding its head, and publishing
(DESIGN: Commit protocol).

A commit is visible exactly when its log entry exists; entries are created with
``put_if_absent`` at ``head + 1`` and a writer that loses a position learns the new head
from one listing of the log and tries the position after it, so two writers of distinct
files both land, and the same path is last-write-wins by log order.

Writers take positions in order, so the log never has a gap: a missing entry with later
ones present is damage, reported as CorruptData by every reader (never taken for the end
of the history), and garbage collection refuses to run on such a log. A writer whose
base is not in the store (restored from an older backup) refuses to publish
(StoreBehind). Each entry names the volume and position it was written for, and each
checkpoint its volume, so a copied, swapped or replayed object is rejected; volumes of
metadata format 1 (older versions) may hold entries that do not name them.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace

from kvol import codec, content, metrics, publish_turns
from kvol.errors import CorruptData, KvolError, NotFound, StoreBehind
from kvol.horizons import Horizons
from kvol.layout import VolumeKeys, parse_seq
from kvol.model import Entry, Op, PutOp, Writer
from kvol.store import Store
from kvol.volume_meta import StoredMeta


def this_writer() -> Writer:
    return Writer(id=_WRITER_ID, host=os.uname().nodename, pid=os.getpid())


_WRITER_ID = secrets.token_hex(8)


def encode_entry(volume_id: str, entry: Entry, seq: int) -> bytes:
    """The stored form of ``entry`` at ``seq`` of volume ``volume_id`` (bound to both)."""
    bound = entry.bound(volume_id, seq)
    payload = replace(bound, ops=()).to_payload()
    # The operations' lists are made a slice at a time as they are encoded: for a
    # commit of 100,000 files, all at once they would be tens of MiB.
    payload["ops"] = (
        replace(bound, ops=bound.ops[i : i + codec.SLICE]).to_payload()["ops"]
        for i in range(0, len(bound.ops), codec.SLICE)
    )
    return codec.encode("entry", payload)


class CommitLog:
    """The log of one volume. Publishing lands an entry only; checkpoints are the
    caller's (see :class:`kvol.checkpoints.Checkpoints`)."""

    def __init__(
        self,
        store: Store,
        volume_id: str,
        keys: VolumeKeys,
        meta: StoredMeta,
        horizons: Horizons,
    ) -> None:
        self.store = store
        self.volume_id = volume_id
        self.keys = keys
        self._meta = meta
        self._horizons = horizons

    # -- reading ----------------------------------------------------------------------------

    def read_entry(self, seq: int) -> Entry | None:
        try:
            raw = self.store.get(self.keys.log(seq))
        except NotFound:
            return None
        try:
            entry = Entry.from_payload(codec.decode("entry", raw))
            self.check_binding("log entry", entry.volume, entry.seq, seq)
        except CorruptData as exc:
            raise CorruptData(f"log entry {seq} of volume {self.volume_id}: {exc}") from exc
        return entry

    def check_binding(self, what: str, volume: object, bound_seq: int | None, seq: int) -> None:
        """An entry or checkpoint is valid only where it was written: its volume and seq."""
        # The metadata is read only when it decides: for an object that does not name both.
        if (volume is None or bound_seq is None) and self._meta.read().binds_entries:
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
                if not self.gap_at(seq + 1):
                    return
                # Published between the read and the check: go on from it.
                entry = self.read_entry(seq + 1)
                if entry is None:
                    raise self.gap_error(seq + 1)
            seq += 1
            yield seq, entry

    def gap_at(self, missing: int) -> bool:
        """Does an entry exist past ``missing`` (which was just read as absent)?

        Writers take positions in order (each one after finding the one before taken),
        so a later entry means ``missing`` exists by now or was lost.
        """
        for info in self.store.list(self.keys.log_prefix, start_after=self.keys.log(missing)):
            if parse_seq(info.key.rsplit("/", 1)[-1]) is not None:
                return True
        return False

    def gap_error(self, missing: int) -> KvolError:
        horizon = self._horizons.current()
        if missing < horizon:
            # Before the horizon entries may be gone: pruned, not lost.
            return self._horizons.pruned(missing, horizon)
        return CorruptData(
            f"the log of volume {self.volume_id} has a gap: entry {missing} is missing but "
            "later entries exist (lost or deleted from the store); `kvol volume fsck` "
            "reports what it affects"
        )

    def last_after(self, taken: int) -> int:
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
                raise self.gap_error(missing)
            last = missing

    # -- writing ----------------------------------------------------------------------------

    def check_not_behind(self, seq: int) -> None:
        """Raise StoreBehind if commit ``seq``, which the caller has seen, is not in the
        store, and CorruptData if the log has a gap right after it."""
        self.require_seen(seq)
        if self.gap_at(seq + 1) and not self.store.exists(self.keys.log(seq + 1)):
            raise self.gap_error(seq + 1)

    def require_seen(self, seq: int) -> None:
        """Raise StoreBehind if commit ``seq``, which the caller has seen, is not in the store
        (StaleBase if it was pruned)."""
        if seq > 0 and not self.store.exists(self.keys.log(seq)):
            if seq < self._horizons.current():
                raise self._horizons.stale_base(seq)
            raise StoreBehind(
                f"volume {self.volume_id} in {self.store.url} has no commit {seq}, which "
                "this writer has seen: the store is behind it (restored from an older "
                "backup?). Nothing was published; a new working copy starts from what the "
                "store holds"
            )

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
        self.require_seen(start)
        objects = {
            self.keys.content(part.kind, part.obj)
            for op in ops
            if isinstance(op, PutOp)
            for part in op.record.parts
        }
        # Content is durable before the entry that refers to it.
        self.store.sync(objects)
        # Stale-writer guard, checked as late as the renewal below: content this entry
        # reuses from the state at its base is kept until at least a grace period after
        # a horizon passes that base (kvol.retention), far longer than a publish takes.
        if base < self._horizons.current():
            raise self._horizons.stale_base(base)
        # Just before publishing: whatever this commit stored or reused long ago is dated
        # anew, so collection cannot take it before the entry lands (kvol.content).
        content.renew_before_publish(self.store, objects)
        # One writer of this volume on this machine at a time from here (an optimization:
        # see kvol.publish_turns); the position is still only ever taken by put_if_absent.
        with publish_turns.turn(self.store.url, self.volume_id):
            seq = self._take_position(start + 1, entry)
        content.published(self.store, objects)
        return seq

    def _take_position(self, seq: int, entry: Entry) -> int:
        """Write ``entry`` at the first free position from ``seq`` on; returns it."""
        while True:
            if self.store.exists(self.keys.log(seq + 1)):
                # Writers take positions in order, so an entry after a free position means
                # the position was lost, not free: filling it would hide the lost commit
                # for good.
                if not self.store.exists(self.keys.log(seq)):
                    raise self.gap_error(seq)
                # Others published since: one listing finds the head however far it moved,
                # instead of a probe per entry (losing a position by one, the usual race,
                # needs none). The new position is checked as this one was.
                seq = self.last_after(seq + 1) + 1
                continue
            # Each position gets its own bytes: the entry names the seq it was written for.
            if self.store.put_if_absent(
                self.keys.log(seq), encode_entry(self.volume_id, entry, seq)
            ):
                return seq
            metrics.COMMIT_CONFLICTS.inc()
            seq += 1
