"""What a commit of many files holds in memory, and the stored forms that streaming its
journal, log entry and index must leave unchanged."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
import zlib
from pathlib import Path

import pytest

from kvol import codec
from kvol.index import Index
from kvol.model import Entry, FileRecord, MkdirOp, Part, PutOp, UnlinkOp, Writer
from kvol.repo import Repo
from kvol.store import FilesystemStore
from kvol.workcopy import COMMIT_JOURNAL_FILE, WorkingCopy

FILES = 3000
#: What a commit of FILES new files may hold at its peak: fixed costs (buffers, threads)
#: and 1 KiB per file (about 700 bytes are needed). Whole stats kept per file, the
#: journal built whole and encoded at once, and the log entry's JSON text held beside
#: its lists came to 15 MB, over 3.5 KiB per file.
PEAK_BYTES = (4 << 20) + FILES * 1024


def write_tree(root: Path, files: int) -> None:
    for d in range(files // 100):
        folder = root / f"d{d:03d}"
        folder.mkdir(parents=True)
        for f in range(100):
            (folder / f"f{f:03d}").write_bytes(b"%d/%d" % (d, f))


def test_a_commit_of_many_files_holds_a_bounded_amount_per_file(tmp_path: Path) -> None:
    repo = Repo.create(FilesystemStore(tmp_path / "store", durable=False))
    wc = WorkingCopy.create(repo, tmp_path / "wc")
    (wc.root / "first").write_text("a first commit loads what commits use")
    wc.commit()
    write_tree(wc.root / "data", FILES)
    tracemalloc.start()
    try:
        result = wc.commit()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    wc.close(final_commit=False)
    assert result.files == FILES
    assert len(repo.state().files) == FILES + 1
    assert peak < PEAK_BYTES


def test_the_commit_journal_is_the_json_of_the_whole(tmp_path: Path) -> None:
    """Written a slice at a time, the journal still reads back as one object with every
    operation, as an entry stores them, and every file's record and stat."""
    repo = Repo.create(FilesystemStore(tmp_path / "store", durable=False))
    wc = WorkingCopy.create(repo, tmp_path / "wc")
    write_tree(wc.root, 2100)  # three slices
    journals: list[dict[str, object]] = []

    def keep_journal(*args: object, **kwargs: object) -> int:
        journals.append(json.loads((wc.meta_dir / COMMIT_JOURNAL_FILE).read_bytes()))
        raise RuntimeError("stop before publishing")

    wc.repo.publish = keep_journal  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="stop before publishing"):
        wc.commit()
    (journal,) = journals
    assert list(journal) == [
        "format",
        "base",
        "known_head",
        "writer",
        "ops",
        "gone",
        "removed_dirs",
        "dirs_added",
        "puts",
    ]
    ops = journal["ops"]
    puts = journal["puts"]
    assert isinstance(ops, list) and isinstance(puts, dict)
    put_ops = [op for op in ops if op[0] == "put"]
    assert len(put_ops) == len(puts) == 2100
    for op in put_ops:
        record, sig, racy = puts[op[1]]
        assert record == op[2:]
        st = (wc.root / op[1]).stat()
        assert sig == [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_mode & 0o7777]
        assert racy is True  # written just now
    wc.close(final_commit=False)


def test_a_log_entry_is_stored_as_the_json_of_the_whole() -> None:
    """The entry's operations are encoded a slice at a time; the stored bytes are what
    compressing the JSON of the whole entry gives (readers of any version agree)."""
    ops: list[PutOp | UnlinkOp | MkdirOp] = []
    for i in range(2500):
        record = FileRecord(i, 10**18 + i, 0o644, f"{i:064x}", (Part("p", "ab" * 32, i, i),))
        ops.append(PutOp(f"d/f{i}", record))
        if i % 7 == 0:
            ops.append(UnlinkOp(f"gone/{i}"))
        if i % 11 == 0:
            ops.append(MkdirOp(f"dir{i}"))
    volume = "0123456789abcdef0123456789abcdef"
    repo = Repo.__new__(Repo)
    repo.volume_id = volume
    for count in (0, 1, codec.SLICE, codec.SLICE + 1, len(ops)):
        entry = Entry(tuple(ops[:count]), 1.5, Writer("w", "h", 1), 3, "message")
        payload = entry.bound(volume, 9).to_payload()
        body = zlib.compress(json.dumps(payload, separators=(",", ":")).encode(), 1)
        whole = f"kvol-entry 1 {hashlib.sha256(body).hexdigest()}\n".encode() + body
        assert repo.entry_bytes(entry, 9) == whole
        assert Entry.from_payload(codec.decode("entry", whole)) == entry.bound(volume, 9)


def test_an_index_saved_in_pieces_loads_as_saved(tmp_path: Path) -> None:
    repo = Repo.create(FilesystemStore(tmp_path / "store", durable=False))
    wc = WorkingCopy.create(repo, tmp_path / "wc")
    write_tree(wc.root, 300)
    wc.commit()
    path = wc.meta_dir / "index"
    loaded = Index.load(path)
    assert (loaded.base, loaded.dirs, loaded.explicit_dirs) == (
        wc.index.base,
        wc.index.dirs,
        wc.index.explicit_dirs,
    )
    assert {p: (e.record, e.stat_key, e.racy) for p, e in loaded.files.items()} == {
        p: (e.record, e.stat_key, e.racy) for p, e in wc.index.files.items()
    }
    wc.close(final_commit=False)
