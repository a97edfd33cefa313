"""The state of one volume at any commit: its nearest checkpoint with the log entries
after it replayed; and the checkpoints, written every :data:`CHECKPOINT_EVERY` commits so
that no read replays more than that."""

from __future__ import annotations

import logging

from kvol import codec, gcpause
from kvol.commit_log import CommitLog
from kvol.errors import CorruptData, NotFound
from kvol.horizons import Horizons
from kvol.layout import VolumeKeys, parse_seq
from kvol.model import State
from kvol.store import Store

log = logging.getLogger(__name__)

#: A checkpoint is written at every seq that is a multiple of this, so reading any state
#: replays at most this many entries.
CHECKPOINT_EVERY = 64


def encode_checkpoint(volume_id: str, state: State) -> bytes:
    """The stored form of a checkpoint of volume ``volume_id`` (bound to it)."""
    payload = state.to_payload()
    payload["volume"] = volume_id
    return codec.encode("checkpoint", payload)


class Checkpoints:
    """States of one volume, and its checkpoints."""

    def __init__(
        self,
        store: Store,
        volume_id: str,
        keys: VolumeKeys,
        commit_log: CommitLog,
        horizons: Horizons,
    ) -> None:
        self.store = store
        self.volume_id = volume_id
        self.keys = keys
        self._log = commit_log
        self._horizons = horizons

    def latest(self, at_most: int | None = None) -> int | None:
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
            horizon = self._horizons.current()
            if seq < horizon:
                raise self._horizons.pruned(seq, horizon)
        checkpoint = self.latest(at_most=seq)
        with gcpause.paused():  # a few objects per file, none in a cycle
            state = self.load(checkpoint) if checkpoint else State()
            for at, entry in self._log.entries_after(state.seq, until=seq):
                state.apply(entry, at)
        if seq is not None and state.seq != seq:
            raise NotFound(f"volume {self.volume_id} has no commit {seq} (head is {state.seq})")
        return state

    def load(self, seq: int) -> State:
        raw = self.store.get(self.keys.checkpoint(seq))
        payload = codec.decode("checkpoint", raw)
        state = State.from_payload(payload)
        if state.seq != seq:
            raise CorruptData(f"checkpoint {seq} holds the state of {state.seq}")
        try:
            self._log.check_binding("checkpoint", payload.get("volume"), state.seq, seq)
        except CorruptData as exc:
            raise CorruptData(f"checkpoint {seq} of volume {self.volume_id}: {exc}") from exc
        return state

    def write(self, seq: int) -> None:
        state = self.state(seq)
        self.store.put_if_absent(
            self.keys.checkpoint(seq), encode_checkpoint(self.volume_id, state)
        )

    def write_if_due(self, seq: int) -> None:
        """After commit ``seq`` landed: its checkpoint, if it is at one of the multiples."""
        if seq % CHECKPOINT_EVERY == 0:
            self._write_quietly(seq)

    def _write_quietly(self, seq: int) -> None:
        # A missing checkpoint only costs readers time; the commit already landed.
        try:
            self.write(seq)
        except Exception as exc:
            log.warning("could not write checkpoint %d of volume %s: %s", seq, self.volume_id, exc)
