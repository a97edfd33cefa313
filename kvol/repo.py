"""One volume's data in a store: its metadata, commit log, checkpoints and content.

:class:`Repo` is what callers use; each of its jobs lives in a module of its own:
:mod:`kvol.volume_meta` (the metadata), :mod:`kvol.commit_log` (the log and the commit
protocol), :mod:`kvol.horizons` (where retained history begins), :mod:`kvol.checkpoints`
(states and checkpoints), :mod:`kvol.history` (commits, activity, restores) and
:mod:`kvol.content_gc` (garbage collection).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from kvol.checkpoints import CHECKPOINT_EVERY as CHECKPOINT_EVERY
from kvol.checkpoints import Checkpoints, encode_checkpoint
from kvol.commit_log import CommitLog, encode_entry
from kvol.commit_log import this_writer as this_writer
from kvol.content import DEFAULT_CHUNK_SIZE, ContentReader
from kvol.content_gc import ContentCollector
from kvol.content_gc import GcReport as GcReport
from kvol.content_gc import Unreferenced as Unreferenced
from kvol.grace import DEFAULT_GC_GRACE_SECONDS as DEFAULT_GC_GRACE_SECONDS
from kvol.history import CommitInfo as CommitInfo
from kvol.history import History
from kvol.history import RepoStats as RepoStats
from kvol.horizons import Horizons
from kvol.layout import VolumeKeys
from kvol.model import VOLUME_FORMAT, Entry, Limits, Op, State, VolumeMeta, Writer
from kvol.store import Store
from kvol.volume_meta import StoredMeta
from kvol.volume_meta import new_volume_id as new_volume_id


class Repo:
    """Access to one volume in a store. Cheap to create; safe to share between threads."""

    def __init__(self, store: Store, volume_id: str, meta: VolumeMeta | None = None) -> None:
        self.store = store
        self.volume_id = volume_id
        self.keys = VolumeKeys(volume_id)
        self._stored_meta = StoredMeta(store, volume_id, self.keys, meta)
        self._horizons = Horizons(store, volume_id, self.keys)
        self._log = CommitLog(store, volume_id, self.keys, self._stored_meta, self._horizons)
        self._checkpoints = Checkpoints(store, volume_id, self.keys, self._log, self._horizons)
        self._history = History(
            store, volume_id, self.keys, self._log, self._horizons, self._checkpoints
        )
        self._collector = ContentCollector(
            store, self.keys, self._log, self._horizons, self._checkpoints
        )

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
        if not repo._stored_meta.create(meta):
            return cls(store, meta.id)  # created before (a retry): keep what is there
        return repo

    @property
    def meta(self) -> VolumeMeta:
        return self._stored_meta.read()

    def exists(self) -> bool:
        return self._stored_meta.exists()

    def destroy(self) -> None:
        """Remove every object of the volume, metadata first so nobody opens it meanwhile."""
        self.store.delete(self.keys.meta)
        for info in list(self.store.list(self.keys.prefix)):
            self.store.delete(info.key)

    # -- the log (kvol.commit_log) --------------------------------------------------------

    def read_entry(self, seq: int) -> Entry | None:
        return self._log.read_entry(seq)

    def entries_after(self, seq: int, until: int | None = None) -> Iterator[tuple[int, Entry]]:
        """Entries after ``seq`` in order, up to ``until`` or else the head as it is while
        reading; raises CorruptData at a gap."""
        return self._log.entries_after(seq, until)

    def check_not_behind(self, seq: int) -> None:
        """Raise StoreBehind if commit ``seq``, which the caller has seen, is not in the
        store, and CorruptData if the log has a gap right after it."""
        self._log.check_not_behind(seq)

    def head(self) -> int:
        """The newest published seq (0 for a volume with no commit). Raises CorruptData
        if the log has a gap."""
        return self._log.last_after(self._checkpoints.latest() or 0)

    def publish(
        self,
        ops: list[Op],
        base: int,
        message: str | None = None,
        *,
        known_head: int = 0,
        writer: Writer | None = None,
    ) -> int:
        """Publish one entry after ``base``, then its checkpoint if one is due; returns the
        seq it landed at. See :meth:`kvol.commit_log.CommitLog.publish`."""
        seq = self._log.publish(ops, base, message, known_head=known_head, writer=writer)
        self._checkpoints.write_if_due(seq)
        return seq

    def entry_bytes(self, entry: Entry, seq: int) -> bytes:
        """The stored form of ``entry`` at ``seq`` of this volume (bound to both)."""
        return encode_entry(self.volume_id, entry, seq)

    # -- retained history (pruned by kvol.retention) ----------------------------------------

    @property
    def horizon_prefix(self) -> str:
        return self._horizons.prefix

    def horizons(self) -> list[tuple[int, float]]:
        """Every pruning horizon the store lists: (seq, when it was recorded by the store's
        clock), oldest first."""
        return self._horizons.listed()

    def horizon(self) -> int:
        """Where retained history begins (0: nothing was ever pruned)."""
        return self._horizons.current()

    # -- state (kvol.checkpoints) -----------------------------------------------------------

    def latest_checkpoint(self, at_most: int | None = None) -> int | None:
        return self._checkpoints.latest(at_most)

    def state(self, seq: int | None = None) -> State:
        """The volume's files at ``seq`` (the head when None). Raises NotFound past the head,
        HistoryPruned before the pruning horizon."""
        return self._checkpoints.state(seq)

    def _load_checkpoint(self, seq: int) -> State:
        # Readers' own checks, which fsck and retention apply too.
        return self._checkpoints.load(seq)

    def write_checkpoint(self, seq: int) -> None:
        self._checkpoints.write(seq)

    def checkpoint_bytes(self, state: State) -> bytes:
        """The stored form of a checkpoint of this volume (bound to it)."""
        return encode_checkpoint(self.volume_id, state)

    def reader(self) -> ContentReader:
        return ContentReader(self.store, self.keys)

    # -- history (kvol.history) -------------------------------------------------------------

    def history(self, limit: int | None = None) -> list[CommitInfo]:
        """Commits of the retained history (from :meth:`horizon` on), newest first."""
        return self._history.commits(limit)

    def restore(self, seq: int, message: str | None = None) -> int:
        """Publish a commit that makes the head equal to the state at ``seq``."""
        head, ops = self._history.restore_ops(seq)
        return self.publish(ops, head, message or f"restore of commit {seq}")

    def stats(self, writers_window: float = 300.0) -> RepoStats:
        return self._history.stats(writers_window)

    # -- garbage collection (kvol.content_gc) -------------------------------------------------

    def referenced_objects(self) -> set[str]:
        """Keys of every content object the history refers to, and any entry or checkpoint
        before the pruning horizon still in the store refers to."""
        return self._collector.referenced_objects()

    def gc(
        self, grace_seconds: float = DEFAULT_GC_GRACE_SECONDS, dry_run: bool = False
    ) -> GcReport:
        """Delete content objects no commit refers to and older than ``grace_seconds``,
        and leftovers of writes killed halfway older than that; see
        :meth:`kvol.content_gc.ContentCollector.collect`."""
        return self._collector.collect(grace_seconds, dry_run)
