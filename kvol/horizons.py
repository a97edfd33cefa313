"""Where a volume's retained history begins: the pruning horizons :mod:`kvol.retention`
records, as readers and writers see them, and the errors for what lies before them."""

from __future__ import annotations

from kvol.errors import HistoryPruned, StaleBase
from kvol.layout import VolumeKeys, parse_seq
from kvol.store import Store


class Horizons:
    """The pruning horizons of one volume."""

    def __init__(self, store: Store, volume_id: str, keys: VolumeKeys) -> None:
        self.store = store
        self.volume_id = volume_id
        self.prefix = keys.prefix + "horizon/"

    def listed(self) -> list[tuple[int, float]]:
        """Every pruning horizon the store lists: (seq, when it was recorded by the store's
        clock), oldest first. Each is created once (put-if-absent) and never rewritten."""
        found = []
        for info in self.store.list(self.prefix):
            seq = parse_seq(info.key.rsplit("/", 1)[-1])
            if seq is not None:
                found.append((seq, info.mtime))
        return sorted(found)

    def current(self) -> int:
        """Where retained history begins (0: nothing was ever pruned). Commits before it
        are out of history: their entries may still be in the store for a while, but no
        reader uses them and no writer may publish on top of them."""
        return max((seq for seq, _ in self.listed()), default=0)

    def pruned(self, seq: int, horizon: int) -> HistoryPruned:
        """The error for reading commit ``seq``, before ``horizon``."""
        return HistoryPruned(
            f"commit {seq} of volume {self.volume_id} was pruned by its retention "
            f"policy: retained history begins at commit {horizon}"
        )

    def stale_base(self, base: int) -> StaleBase:
        """The error for publishing on top of commit ``base``, pruned."""
        return StaleBase(
            f"this working copy is based on commit {base} of volume {self.volume_id}, which "
            f"its retention policy pruned (retained history begins at commit "
            f"{self.current()}): nothing was published. Reload it (local changes are kept), "
            "then commit again"
        )
