"""The metadata object of one volume in a store: created once, with put-if-absent, when
the volume is, and read (and checked to name its volume) at most once per reader."""

from __future__ import annotations

from kvol.errors import CorruptData, NotFound
from kvol.layout import VolumeKeys
from kvol.model import VolumeMeta
from kvol.store import Store


def new_volume_id() -> str:
    import uuid  # only here: a volume is created once

    return uuid.uuid4().hex


class StoredMeta:
    """One volume's metadata: read from the store on first use, then kept."""

    def __init__(
        self, store: Store, volume_id: str, keys: VolumeKeys, meta: VolumeMeta | None = None
    ) -> None:
        self.store = store
        self.volume_id = volume_id
        self.keys = keys
        self._meta = meta

    def create(self, meta: VolumeMeta) -> bool:
        """Store ``meta`` unless the volume already has metadata; False if it had (what is
        there is kept, and read when first asked for)."""
        if not self.store.put_if_absent(self.keys.meta, meta.to_json()):
            return False
        self._meta = meta
        return True

    def read(self) -> VolumeMeta:
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
