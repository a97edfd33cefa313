"""Making test trees quickly, with content that never deduplicates by accident."""

from __future__ import annotations

import os
from pathlib import Path

_BLOCK = os.urandom(1 << 20)
#: Files per directory in generated trees (well under a volume's per-directory limit).
FILES_PER_DIR = 1000


def _fill(size: int, salt: bytes) -> bytes:
    """``size`` bytes starting with ``salt``, so each file's content is distinct."""
    if size <= len(salt):
        return salt[:size]
    body = _BLOCK[: size - len(salt)]
    while len(body) < size - len(salt):
        body += _BLOCK[: size - len(salt) - len(body)]
    return salt + body


def rel_path(i: int) -> str:
    return f"d{i // FILES_PER_DIR:04d}/f{i:07d}"


def write_small_files(root: Path, count: int, size: int, *, generation: int = 0) -> list[str]:
    """``count`` files of ``size`` bytes as ``dNNNN/fNNNNNNN``; returns their paths.

    ``generation`` changes every file's content (for "files changed" scenarios).
    """
    rels = [rel_path(i) for i in range(count)]
    made: set[str] = set()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    base = str(root)
    for i, rel in enumerate(rels):
        directory = rel.split("/", 1)[0]
        if directory not in made:
            os.makedirs(os.path.join(base, directory), exist_ok=True)
            made.add(directory)
        fd = os.open(os.path.join(base, rel), flags, 0o644)
        try:
            os.write(fd, _fill(size, b"%d:%d\n" % (generation, i)))
        finally:
            os.close(fd)
    return rels


def write_large_files(root: Path, total: int, count: int, *, block: int = 8 << 20) -> list[str]:
    """``count`` files adding up to ``total`` bytes; every ``block`` of them is distinct,
    so content-addressed storage finds nothing to share."""
    root.mkdir(parents=True, exist_ok=True)
    per_file = total // count
    buffer = bytearray(_fill(block, b""))
    rels = []
    serial = 0
    for n in range(count):
        rel = f"large-{n:03d}.bin"
        with open(root / rel, "wb", buffering=0) as f:
            left = per_file if n < count - 1 else total - per_file * (count - 1)
            while left > 0:
                serial += 1
                buffer[:16] = serial.to_bytes(16, "big")
                piece = min(left, block)
                f.write(memoryview(buffer)[:piece])
                left -= piece
        rels.append(rel)
    return rels


def tree_bytes(root: Path) -> int:
    return sum(
        os.path.getsize(os.path.join(d, name)) for d, _, names in os.walk(root) for name in names
    )
