"""Settings of a volume that may change after it is created, kept in its store.

``meta.json`` holds what is fixed at creation (version, limits); these are what a Volume's
spec may change later, such as how often pods commit in the background. The operator
writes them from the spec, and the node plugin reads them when it publishes a working copy,
so the plugin needs no Kubernetes API access to honour them. The object is replaced
whole (an atomic put): a reader sees the old settings or the new ones.

Layout: ``volumes/<volume-id>/settings.json`` = ``{"format": 1, "autocommitIntervalSeconds": N}``.
It is not content: garbage collection never touches it, and destroying the volume
removes it with everything else under the volume's prefix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kvol.errors import CorruptData, NotFound
from kvol.layout import VolumeKeys
from kvol.store import Store

FORMAT = 1


def settings_key(volume_id: str) -> str:
    return VolumeKeys(volume_id).prefix + "settings.json"


@dataclass(frozen=True)
class VolumeSettings:
    #: Seconds between background commits of each working copy; 0 turns them off; None
    #: leaves the choice to whoever mounts the volume.
    autocommit_seconds: float | None = None

    def to_json(self) -> bytes:
        data: dict[str, object] = {"format": FORMAT}
        if self.autocommit_seconds is not None:
            data["autocommitIntervalSeconds"] = self.autocommit_seconds
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> VolumeSettings:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            seconds = data.get("autocommitIntervalSeconds")
            if seconds is not None and (
                isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0
            ):
                raise ValueError(f"autocommitIntervalSeconds is {seconds!r}")
        except (ValueError, AttributeError) as exc:
            raise CorruptData(f"volume settings are malformed: {exc}") from exc
        return cls(autocommit_seconds=None if seconds is None else float(seconds))


def read_settings(store: Store, volume_id: str) -> VolumeSettings:
    """The volume's settings; all unset when none were ever written."""
    try:
        raw = store.get(settings_key(volume_id))
    except NotFound:
        return VolumeSettings()
    return VolumeSettings.from_json(raw)


def write_settings(store: Store, volume_id: str, settings: VolumeSettings) -> bool:
    """Store ``settings`` unless they are already there; returns whether it wrote."""
    try:
        if read_settings(store, volume_id) == settings:
            return False
    except CorruptData:
        pass  # replaced below
    store.put(settings_key(volume_id), settings.to_json())
    return True
