"""Helpers shared by the core's unit and integration tests: real stores, real trees."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from hypothesis import HealthCheck, settings

from kvol import codec
from kvol.content import ContentWriter
from kvol.layout import VolumeKeys, parse_seq
from kvol.model import Entry, FileRecord, PutOp, State
from kvol.repo import Repo
from kvol.store import FilesystemStore, ObjectInfo

#: Small chunks, so large files are many objects.
CHUNK = 100_000
HOUR = 3600.0


class CountingStore(FilesystemStore):
    """A real filesystem store that counts what is asked of it, by operation and key."""

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = False) -> None:
        super().__init__(root, durable=durable)
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.keys: list[tuple[str, str]] = []

    def _note(self, op: str, key: str) -> None:
        with self._lock:
            self.calls[op] += 1
            self.keys.append((op, key))

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.keys.clear()

    def count(self, op: str, under: str = "") -> int:
        with self._lock:
            return sum(1 for o, k in self.keys if o == op and k.startswith(under))

    def _get(self, key: str) -> bytes:
        self._note("get", key)
        return super()._get(key)

    def _get_range(self, key: str, start: int, length: int) -> bytes:
        self._note("get_range", key)
        return super()._get_range(key, start, length)

    def _put(self, key: str, data: bytes | memoryview) -> None:
        self._note("put", key)
        super()._put(key, data)

    def _put_staged(self, key: str, data: bytes | memoryview) -> None:
        self._note("put", key)
        super()._put_staged(key, data)

    def _put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        self._note("put_if_absent", key)
        return super()._put_if_absent(key, data)

    def _head(self, key: str) -> ObjectInfo:
        self._note("head", key)
        return super()._head(key)

    def _list(self, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        self._note("list", prefix)
        return super()._list(prefix, start_after)

    def _delete(self, key: str) -> None:
        self._note("delete", key)
        super()._delete(key)


def write(root: Path, rel: str, data: bytes | str) -> Path:
    """Write a file inside a working copy, creating its directories."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (the reserved ``.kvol`` excluded) with its content."""
    result: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != ".kvol"]
            rel_dir = ""
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            with open(full, "rb") as f:
                result[rel] = f.read()
    return result


def volume_tree(repo: Repo, seq: int | None = None) -> dict[str, bytes]:
    """Every file of the volume at ``seq`` (head by default), read back verified."""
    state = repo.state(seq)
    reader = repo.reader()
    return {path: reader.read(record) for path, record in state.files.items()}


def object_files(store: FilesystemStore, volume_id: str, kind: str) -> list[Path]:
    """Content objects ("blobs" or "packs") of a volume, as files in the store directory."""
    base = store.root / "volumes" / volume_id / kind
    return sorted(p for p in base.rglob("*") if p.is_file())


def log_seqs(store: FilesystemStore, volume_id: str) -> list[int]:
    log_dir = store.root / "volumes" / volume_id / "log"
    if not log_dir.is_dir():
        return []
    return sorted(s for s in (parse_seq(p.name) for p in log_dir.iterdir()) if s is not None)


def rewrite_entry(store: FilesystemStore, volume_id: str, seq: int, payload: object) -> None:
    """Replace a published log entry with another payload, with a valid checksum (an attacker
    who can write the store directory, not a torn write)."""
    key = VolumeKeys(volume_id).log(seq)
    (store.root / key).write_bytes(codec.encode("entry", payload))


def read_payload(store: FilesystemStore, volume_id: str, seq: int) -> dict[str, object]:
    raw = (store.root / VolumeKeys(volume_id).log(seq)).read_bytes()
    payload = codec.decode("entry", raw)
    assert isinstance(payload, dict)
    return payload


def record_of(state: State, path: str) -> FileRecord:
    return state.files[path]


def entry(repo: Repo, seq: int) -> Entry:
    found = repo.read_entry(seq)
    assert found is not None, f"no entry {seq}"
    return found


def props(examples: int = 100) -> settings:
    """Hypothesis settings of the core's property tests: no example database left in the
    tree, and no per-example deadline (a loaded CI machine is not a failure)."""
    return settings(
        max_examples=examples,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


def upload(repo: Repo, path: str, data: bytes) -> PutOp:
    """A put whose content really is in the store (a commit's upload, in packs or blobs of
    its own); publishing it is the caller's move."""
    with ContentWriter(repo.store, repo.keys, repo.meta.chunk_size) as writer:
        future = writer.add_bytes(data)
        writer.finish()
        up = future.result()
    return PutOp(path, FileRecord(up.size, 0, 0o644, up.hash, up.parts))


def backdate(paths: Path | Iterable[Path], seconds: float) -> None:
    """Make store objects look ``seconds`` old to the store's clock (their mtime)."""
    past = time.time() - seconds
    for path in [paths] if isinstance(paths, Path) else paths:
        os.utime(path, (past, past))


def aged_orphans(store: FilesystemStore, repo: Repo, data: bytes, seconds: float) -> list[Path]:
    """Upload ``data`` as ``f`` and never publish it (a commit that failed or is still in
    flight); its blobs, returned, are made ``seconds`` old."""
    upload(repo, "f", data)
    orphans = object_files(store, repo.volume_id, "blobs")
    backdate(orphans, seconds)
    return orphans
