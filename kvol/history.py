"""What one volume's retained history holds: its commits, who wrote lately, and what a
restore of an older commit publishes."""

from __future__ import annotations

import time
from dataclasses import dataclass

from kvol import paths
from kvol.checkpoints import Checkpoints
from kvol.commit_log import CommitLog
from kvol.errors import HistoryPruned
from kvol.horizons import Horizons
from kvol.layout import VolumeKeys, parse_seq
from kvol.model import DeleteOp, MkdirOp, Op, PutOp, RmdirOp, UnlinkOp, Writer
from kvol.store import Store


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


class History:
    """Reads of one volume's retained history (from its horizon on)."""

    def __init__(
        self,
        store: Store,
        volume_id: str,
        keys: VolumeKeys,
        commit_log: CommitLog,
        horizons: Horizons,
        checkpoints: Checkpoints,
    ) -> None:
        self.store = store
        self.volume_id = volume_id
        self.keys = keys
        self._log = commit_log
        self._horizons = horizons
        self._checkpoints = checkpoints

    def commits(self, limit: int | None = None) -> list[CommitInfo]:
        """Commits of the retained history, newest first."""
        horizon = self._horizons.current()
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
            entry = self._log.read_entry(seq)
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

    def restore_ops(self, seq: int) -> tuple[int, list[Op]]:
        """What a commit that makes the head equal to the state at ``seq`` publishes: the
        head it goes on top of, and its operations. The caller publishes them at once."""
        target = self._checkpoints.state(seq)
        head = self._checkpoints.state()
        ops: list[Op] = []
        # A deletion names what this writer saw at the head it restores over, file by
        # file, then directories deepest first: a file another writer adds meanwhile
        # under one of them survives, and so does its directory.
        for path in sorted(set(head.files) - set(target.files)):
            ops.append(UnlinkOp(path))
        for path in sorted(head.dirs - target.all_dirs(), key=paths.deepest_first):
            ops.append(RmdirOp(path))
        for path in sorted(target.dirs - head.dirs):
            ops.append(MkdirOp(path))
        for path, record in sorted(target.files.items()):
            if head.files.get(path) != record:
                ops.append(PutOp(path, record))
        # The records restored come from commit ``seq``: the stale-writer guard applies to
        # it as to a base, checked as late (nothing is uploaded in between).
        horizon = self._horizons.current()
        if seq < horizon:
            raise HistoryPruned(
                f"commit {seq} of volume {self.volume_id} was pruned by its retention "
                f"policy while it was being restored: retained history begins at commit "
                f"{horizon}; nothing was published"
            )
        return head.seq, ops

    def stats(self, writers_window: float = 300.0) -> RepoStats:
        state = self._checkpoints.state()
        last_time: float | None = None
        writers: set[str] = set()
        cutoff = time.time() - writers_window
        seq = state.seq
        # Walk back through recent entries only: enough for "who wrote lately".
        while seq > 0:
            entry = self._log.read_entry(seq)
            if entry is None:
                break
            if last_time is None:
                last_time = entry.time
            if entry.time < cutoff:
                break
            writers.add(f"pod:{entry.writer.pod}" if entry.writer.pod else entry.writer.id)
            seq -= 1
        return RepoStats(len(state.files), state.total_bytes, state.seq, last_time, len(writers))
