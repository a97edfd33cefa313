"""Where everything of a volume lives in a store (DESIGN: Layout of one volume)."""

from __future__ import annotations

SEQ_DIGITS = 12


def seq_name(seq: int) -> str:
    return f"{seq:0{SEQ_DIGITS}d}"


def parse_seq(name: str) -> int | None:
    """The seq of a zero-padded object name, or None for anything else (stray files)."""
    if len(name) == SEQ_DIGITS and name.isdigit():
        return int(name)
    return None


class VolumeKeys:
    """Key names of one volume. Content objects fan out by their first two hex digits so
    a filesystem store never holds one directory of millions of entries."""

    def __init__(self, volume_id: str) -> None:
        self.prefix = f"volumes/{volume_id}/"
        self.meta = self.prefix + "meta.json"
        self.log_prefix = self.prefix + "log/"
        self.checkpoint_prefix = self.prefix + "checkpoints/"
        self.blob_prefix = self.prefix + "blobs/"
        self.pack_prefix = self.prefix + "packs/"

    def log(self, seq: int) -> str:
        return self.log_prefix + seq_name(seq)

    def checkpoint(self, seq: int) -> str:
        return self.checkpoint_prefix + seq_name(seq)

    def blob(self, digest: str) -> str:
        return f"{self.blob_prefix}{digest[:2]}/{digest}"

    def pack(self, digest: str) -> str:
        return f"{self.pack_prefix}{digest[:2]}/{digest}"

    def content(self, kind: str, digest: str) -> str:
        return self.blob(digest) if kind == "b" else self.pack(digest)


CATALOG_PREFIX = "catalog/"


def catalog_key(scope: str, name: str) -> str:
    return f"{CATALOG_PREFIX}{scope}/{name}"
