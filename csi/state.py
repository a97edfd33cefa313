"""The node plugin's record of what it published, kept on the host.

One JSON file lists every publication (a working copy at a target path). It is written
whole to a temporary file, fsynced and renamed over the old one, then the directory is
fsynced: a crash leaves the old list or the new one, never half of either. A restarted
plugin reads it back and re-adopts every working copy.

The same file lists the warm snapshots: read-only lower snapshots no publication uses
any more, kept until a deadline (wall-clock seconds, so that a restarted plugin keeps
them as long as the first one would have) for the next pod of the volume. Forgetting a
publication and keeping its snapshot warm is one write, so a crash between the two
neither leaks the snapshot nor drops it early.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from kvol.errors import CorruptData
from kvol.fsops import write_atomically

FORMAT = 1
#: A publication's phase, recorded before the step it names is taken:
#: "publishing" until the pod's mount is in place (no pod has seen the copy, so a copy
#: left in this phase holds nothing to keep); "published" while a pod may write to it;
#: "tearing-down" once its final commit succeeded and removal may have begun: from then on
#: the copy may be partly removed, so it is never committed or served again, only removed.
#: ("unpublishing" is read for records of older versions and treated as "published".)
Phase = Literal["publishing", "published", "unpublishing", "tearing-down"]
PHASES = ("publishing", "published", "unpublishing", "tearing-down")
TEARING_DOWN: Phase = "tearing-down"


@dataclass(frozen=True)
class Publication:
    """One volume published at one target path."""

    #: The CSI volume id (per pod for inline volumes, the PV's handle otherwise).
    volume_id: str
    target_path: str
    #: The kvol volume behind it: catalog name, namespace, store backend and id.
    name: str
    namespace: str
    backend: str
    kvol_id: str
    #: This publication's private directory under the state dir (index, upper layer, ...).
    workdir: str
    readonly: bool = False
    sub_path: str = ""
    #: "overlay" (copy-on-write over a shared lower snapshot) or "plain" (a full copy).
    layout: str = "plain"
    #: The shared lower snapshot an overlay copy sits on, as "<kvol_id>/<seq>".
    lower: str | None = None
    autocommit_seconds: float = 0.0
    phase: Phase = "publishing"
    published_at: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    def with_phase(self, phase: Phase) -> Publication:
        return replace(self, phase=phase)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Publication:
        if not isinstance(data, dict):
            raise CorruptData("publication record is not an object")
        known = {f.name for f in fields(cls)}
        try:
            pub = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise CorruptData(f"publication record is malformed: {exc}") from exc
        if pub.phase not in PHASES or not pub.target_path or not pub.volume_id:
            raise CorruptData(f"publication record is malformed: {data!r}")
        return pub


class StateFile:
    """Publications by target path, persisted atomically on every change."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._pubs, self._warm = self._load()

    def _load(self) -> tuple[dict[str, Publication], dict[str, float]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}, {}
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise CorruptData(f"plugin state {self.path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CorruptData(f"plugin state {self.path} has an unknown format")
        pubs = [Publication.from_dict(p) for p in data.get("publications", [])]
        warm = data.get("warm", {})
        if not isinstance(warm, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) for k, v in warm.items()
        ):
            raise CorruptData(f"plugin state {self.path} has malformed warm snapshots")
        return {p.target_path: p for p in pubs}, {k: float(v) for k, v in warm.items()}

    def get(self, target_path: str) -> Publication | None:
        with self._lock:
            return self._pubs.get(target_path)

    def all(self) -> list[Publication]:
        with self._lock:
            return list(self._pubs.values())

    def warm(self) -> dict[str, float]:
        """Warm snapshots ("<family>/<seq>") and the time (``time.time()``) they expire."""
        with self._lock:
            return dict(self._warm)

    def put(self, pub: Publication) -> None:
        with self._lock:
            updated = dict(self._pubs)
            updated[pub.target_path] = pub
            self._save(updated, self._warm)
            self._pubs = updated

    def remove(self, target_path: str, warm: tuple[str, float] | None = None) -> None:
        """Forget a publication; with ``warm`` (snapshot, expiry), keep that snapshot
        warm until then, in the same write."""
        with self._lock:
            if target_path not in self._pubs and warm is None:
                return
            updated = dict(self._pubs)
            updated.pop(target_path, None)
            kept = dict(self._warm)
            if warm is not None:
                kept[warm[0]] = warm[1]
            self._save(updated, kept)
            self._pubs, self._warm = updated, kept

    def revise_warm(self, changes: dict[str, tuple[float, float | None]]) -> None:
        """Per snapshot, ``(seen, new)``: its expiry becomes ``new`` (None: no longer
        warm) if it is still ``seen``; one a publication released meanwhile keeps its
        new expiry."""
        with self._lock:
            kept = dict(self._warm)
            for key, (seen, new) in changes.items():
                if kept.get(key) != seen:
                    continue
                if new is None:
                    del kept[key]
                else:
                    kept[key] = new
            if kept == self._warm:
                return
            self._save(self._pubs, kept)
            self._warm = kept

    def _save(self, pubs: dict[str, Publication], warm: dict[str, float]) -> None:
        body = json.dumps(
            {
                "format": FORMAT,
                "publications": [pubs[k].to_dict() for k in sorted(pubs)],
                "warm": warm,
            },
            indent=1,
            sort_keys=True,
        ).encode()
        write_atomically(self.path, body)
