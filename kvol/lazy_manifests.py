"""The manifests of a lazy cache (see :mod:`kvol.lazy`): what each placeholder must be filled
with, written durably before any of them appears in the cache, so that a restarted filler
finds every placeholder a previous process left unfilled; a manifest goes once none of its
placeholders waits any more."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path

from kvol import fsops
from kvol.errors import CorruptData
from kvol.model import FileRecord

log = logging.getLogger(__name__)

#: Directories where older versions made placeholders before they got their names.
SPOOL_PREFIX = "spool-"


class Manifests:
    """The manifests in one state directory, and how many placeholders each still has."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._left: dict[Path, int] = {}

    def name(self) -> Path:
        """A path for a new manifest."""
        return self.state / f"{secrets.token_hex(8)}.json"

    def write(self, manifest: Path, volume_id: str, records: Iterable[FileRecord]) -> None:
        """Make ``manifest`` durable, for placeholders of ``records`` about to be placed."""
        listed = [r.to_list() for r in records]
        body = {"format": 1, "volume": volume_id, "records": listed}
        fsops.write_atomically(manifest, json.dumps(body).encode())
        # Counted before any is placed: a fill that ends early must not drop it.
        self.count(manifest, len(listed))

    def count(self, manifest: Path, left: int) -> None:
        """``left`` of ``manifest``'s placeholders wait for their fill."""
        with self._lock:
            self._left[manifest] = left

    def release(self, manifest: Path, count: int) -> None:
        """``count`` of ``manifest``'s placeholders wait no more (filled, gone, or never
        placed); the manifest goes with the last."""
        with self._lock:
            left = self._left.get(manifest, 0) - count
            self._left[manifest] = left
        if left <= 0:
            self.drop(manifest)

    def drop(self, manifest: Path) -> None:
        with self._lock:
            self._left.pop(manifest, None)
        manifest.unlink(missing_ok=True)

    def left_behind(self) -> list[Path]:
        """The manifests a previous process left, in order."""
        for spool in self.state.glob(f"{SPOOL_PREFIX}*"):
            # Left by an older version's killed place(): what got its name is in the
            # cache, the rest is not.
            shutil.rmtree(spool, ignore_errors=True)
        return sorted(self.state.glob("*.json"))

    def read(self, manifest: Path) -> tuple[str, list[FileRecord]] | None:
        """The volume and records ``manifest`` names; None if it cannot be read."""
        try:
            body = json.loads(manifest.read_bytes())
            volume_id = body["volume"]
            # As the log has them: a record whose parts do not add up to its size
            # (older versions published some) gets a job whose fills fail.
            records = [FileRecord.from_list(r, check_size=False) for r in body["records"]]
        except (ValueError, KeyError, TypeError, CorruptData):
            log.warning("unreadable lazy manifest %s", manifest)
            return None
        return volume_id, records
