"""The index of a working copy: what the volume had at the copy's base, and the stat of
each local file when it was known to match, so unchanged files are never read again."""

from __future__ import annotations

import json
import os
import secrets
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvol.errors import CorruptData
from kvol.model import FileRecord, State

#: Files modified this close to a scan are hashed again next time: a write within the
#: filesystem's timestamp granularity could otherwise go unseen ("racy" files).
RACY_NS = 2_000_000_000


@dataclass(slots=True)
class Signature:
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int
    mode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Signature:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_mode & 0o7777)

    def to_list(self) -> list[int]:
        return [self.size, self.mtime_ns, self.ino, self.ctime_ns, self.mode]


@dataclass(slots=True)
class IndexEntry:
    #: The file as the volume has it (at base, or as this copy committed it); None for a
    #: file this copy has never committed.
    record: FileRecord | None
    #: Stat of the local file when it matched ``record``; None if it never did.
    sig: Signature | None
    #: Hash again at the next scan even if the stat matches.
    racy: bool = False

    def is_clean(self, st: os.stat_result) -> bool:
        return (
            not self.racy
            and self.sig is not None
            and self.sig.size == st.st_size
            and self.sig.mtime_ns == st.st_mtime_ns
            and self.sig.ino == st.st_ino
            and self.sig.ctime_ns == st.st_ctime_ns
            and self.sig.mode == st.st_mode & 0o7777
        )


@dataclass
class Index:
    volume_id: str
    base: int = 0
    files: dict[str, IndexEntry] = field(default_factory=dict)
    #: Every directory of the volume as this copy knows it (explicit and implied).
    dirs: set[str] = field(default_factory=set)
    #: Explicit directories of the volume (kept so the committed view can be rebuilt).
    explicit_dirs: set[str] = field(default_factory=set)

    def committed_state(self) -> State:
        """The volume as this copy last saw it (base plus its own commits)."""
        files = {p: e.record for p, e in self.files.items() if e.record is not None}
        return State(self.base, files, set(self.explicit_dirs))

    def known_content(self) -> dict[str, tuple[Any, ...]]:
        return {e.record.hash: e.record.parts for e in self.files.values() if e.record is not None}

    # -- persistence (atomic: temp file, fsync, rename) ---------------------------------------

    def save(self, path: Path) -> None:
        payload = {
            "format": 1,
            "volume_id": self.volume_id,
            "base": self.base,
            "files": {
                p: [
                    e.record.to_list() if e.record else None,
                    e.sig.to_list() if e.sig else None,
                    e.racy,
                ]
                for p, e in self.files.items()
            },
            "dirs": sorted(self.dirs),
            "explicit_dirs": sorted(self.explicit_dirs),
        }
        data = zlib.compress(json.dumps(payload, separators=(",", ":")).encode(), 1)
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Index:
        try:
            payload = json.loads(zlib.decompress(path.read_bytes()))
            index = cls(str(payload["volume_id"]), int(payload["base"]))
            for p, (record, sig, racy) in payload["files"].items():
                index.files[p] = IndexEntry(
                    FileRecord.from_list(record) if record is not None else None,
                    Signature(*sig) if sig is not None else None,
                    bool(racy),
                )
            index.dirs = set(payload["dirs"])
            index.explicit_dirs = set(payload["explicit_dirs"])
        except (OSError, ValueError, KeyError, TypeError, zlib.error) as exc:
            raise CorruptData(f"working copy index {path} is unreadable: {exc}") from exc
        return index
