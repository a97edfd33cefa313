"""A small change in a large copy costs what it changes: a copy held open finds changes
without reading every directory, a commit of one file reads no record of the files it
leaves alone, and saving the index copies unparsed records as they were loaded."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from kvol import index as index_module
from kvol.catalog import Catalog
from kvol.errors import LimitExceeded
from kvol.index import Index, IndexEntry, _encode
from kvol.model import FileRecord, Limits, Part
from kvol.workcopy import WorkingCopy

_AN_HOUR_AGO = time.time_ns() - 3600 * 10**9


def _write_settled(root: Path, files: int, dirs: int) -> None:
    """``files`` files ``d<k>/f<i>`` in ``dirs`` directories, each holding "file <i>", all
    older than the racy window (else the next scan hashes every one again)."""
    for i in range(files):
        path = root / f"d{i % dirs}/f{i}"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"file {i}")
        os.utime(path, ns=(_AN_HOUR_AGO, _AN_HOUR_AGO))


def test_a_one_file_commit_parses_no_record_of_the_files_it_leaves_alone(
    catalog: Catalog, tmp_path: Path
) -> None:
    # Every kind of limit, so that the limits check has all of them to do.
    limits = Limits(max_files=1000, max_bytes=1 << 20, max_files_per_directory=100)
    catalog.create("big", limits=limits)
    wc = WorkingCopy.create(catalog.repo("big"), tmp_path / "wc")
    _write_settled(wc.root, 300, 3)
    wc.commit()
    wc.close(final_commit=False)

    wc = WorkingCopy.open(tmp_path / "wc")
    (wc.root / "d1/f1").write_text("changed")
    assert wc.commit().files == 1
    parsed = [p for p, e in wc.index.files.items() if e._record is not None]
    assert parsed == ["d1/f1"]
    wc.close(final_commit=False)


def _made(wc: WorkingCopy) -> list[str]:
    """Paths of the copy's index made into entries (the others are still loaded rows)."""
    return sorted(p for p, v in wc.index._entries.items() if not isinstance(v, int))


def test_a_one_file_commit_of_a_copy_opened_anew_makes_an_entry_of_that_file_only(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``kvol volume commit`` runs: the scan compares the stat of every file with its
    row, the limits are counted from the rows, the known content is searched in them, and
    the save writes a delta of what changed; no other file becomes an entry."""
    # The files go to the base, not to a delta (whose files load as entries).
    monkeypatch.setattr(index_module, "_DELTA_AT_LEAST", 0)
    catalog.create("big", limits=Limits(max_files=1000, max_bytes=1 << 20))
    wc = WorkingCopy.create(catalog.repo("big"), tmp_path / "wc")
    _write_settled(wc.root, 200, 4)
    wc.commit()
    wc.close(final_commit=False)

    wc = WorkingCopy.open(tmp_path / "wc")
    (wc.root / "d1/f1").write_text("changed")
    (wc.root / "d2/copy-of-f7").write_text("file 7")  # content the volume has
    result = wc.commit()
    assert (result.files, result.sent_bytes) == (2, len("changed"))
    # The two committed, and the file whose content the new one reuses.
    assert _made(wc) == ["d1/f1", "d2/copy-of-f7", "d3/f7"]
    assert wc.index.known_content()._by_hash is None  # searched, no table of every file
    assert wc.index.recorded_bytes() == sum(len(p.read_bytes()) for p in wc.root.glob("d*/*"))
    wc.close(final_commit=False)
    assert (tmp_path / "wc/.kvol/index.delta").exists()  # the change, beside the base
    wc = WorkingCopy.open(tmp_path / "wc")
    assert wc.commit().seq is None
    assert _made(wc) == ["d1/f1", "d2/copy-of-f7"]  # the delta's entries, loaded as such
    wc.close(final_commit=False)


def test_a_scan_of_loaded_rows_finds_what_a_scan_of_entries_finds(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan reads a loaded file's signature from its row: it must tell exactly what
    it tells from the entry, for every kind of row (matched, racy, never matched, never
    committed)."""
    monkeypatch.setattr(index_module, "_DELTA_AT_LEAST", 0)  # every save a base
    catalog.create("v")
    wc = WorkingCopy.create(catalog.repo("v"), tmp_path / "wc")
    for i in range(12):
        (wc.root / f"f{i}").write_text(f"file {i}")
        os.utime(wc.root / f"f{i}", ns=(_AN_HOUR_AGO, _AN_HOUR_AGO))
    wc.commit()
    (wc.root / "racy").write_text("just written")  # hashed again by the next scan
    wc.commit()
    index = wc.index
    index.put("never-committed", IndexEntry(None, (1, 2, 3, 4, 0o644)))
    (wc.root / "never-committed").write_text("x")
    kept_out = index.entry("f11")
    assert kept_out is not None
    kept_out.stat_key = None  # a local change kept the volume's file out
    index.save(tmp_path / "wc/.kvol/index")
    wc.close(final_commit=False)

    (wc.root / "f1").write_text("changed, same size")  # new mtime and size
    os.utime(wc.root / "f2", ns=(_AN_HOUR_AGO + 1, _AN_HOUR_AGO + 1))  # touched
    os.chmod(wc.root / "f3", 0o600)
    (wc.root / "f4").unlink()
    (wc.root / "f5").unlink()
    (wc.root / "f5").write_text("file 5")  # same content, another inode
    (wc.root / "new").write_text("new")

    def scanned(copy: WorkingCopy) -> tuple[object, ...]:
        found = copy._scan_everything()
        return (sorted(found.candidates), sorted(found.deleted), found.dirs_added)

    rows = WorkingCopy.open(tmp_path / "wc")
    by_rows = scanned(rows)
    assert rows.index._rows is not None  # compared in the rows
    rows.close(final_commit=False)
    entries = WorkingCopy.open(tmp_path / "wc")
    entries.index.files  # noqa: B018 -- every file made an entry
    assert scanned(entries) == by_rows
    entries.close(final_commit=False)
    assert by_rows[0] == ["f1", "f11", "f2", "f3", "f5", "never-committed", "new", "racy"]
    assert by_rows[1] == ["f4"]


def test_limits_still_count_every_file_and_directory(catalog: Catalog, tmp_path: Path) -> None:
    catalog.create("limited", limits=Limits(max_files=5, max_bytes=100, max_files_per_directory=3))
    wc = WorkingCopy.create(catalog.repo("limited"), tmp_path / "wc")
    (wc.root / "a/b").mkdir(parents=True)
    (wc.root / "a/b/one").write_text("1" * 40)
    (wc.root / "a/two").write_text("2" * 40)
    wc.commit()
    wc.close(final_commit=False)
    wc = WorkingCopy.open(tmp_path / "wc")  # records unparsed, as after a restart
    (wc.root / "a/c/d").mkdir(parents=True)  # a/ would hold b, two, c and e
    (wc.root / "a/e").mkdir()
    with pytest.raises(LimitExceeded, match="directory a would hold 4 entries"):
        wc.commit()
    (wc.root / "a/e").rmdir()
    (wc.root / "r").mkdir()
    (wc.root / "r/three").write_text("3" * 21)  # 101 bytes in all
    with pytest.raises(LimitExceeded, match="101 bytes"):
        wc.commit()
    (wc.root / "r/three").write_text("3" * 20)
    assert wc.commit().files == 1
    for name in ("r/x", "r/y", "a/b/z"):
        (wc.root / name).write_text("")
    with pytest.raises(LimitExceeded, match="6 files"):
        wc.commit()
    (wc.root / "a/two").unlink()  # deletions count too: five files again
    assert wc.commit().files == 3
    wc.close(final_commit=False)


def test_an_index_saved_unparsed_is_the_index_saved_parsed(
    catalog: Catalog, tmp_path: Path
) -> None:
    catalog.create("v")
    wc = WorkingCopy.create(catalog.repo("v"), tmp_path / "wc")
    for i in range(40):
        (wc.root / f"f{i}").write_bytes(b"x" * (i * 100))
    wc.commit()
    wc.close(final_commit=False)
    index_path = tmp_path / "wc/.kvol/index"
    loaded = Index.load(index_path)
    unparsed = _encode(loaded)
    dict(loaded.committed_state().files)  # parses every record
    assert all(e._record is not None for e in loaded.files.values())
    assert _encode(loaded) == unparsed


def test_an_idle_commit_of_a_copy_held_open_reads_no_directory(
    wc: WorkingCopy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With autocommit on, a commit when nothing changed costs nothing per file."""
    for i in range(50):
        (wc.root / f"d{i % 5}").mkdir(exist_ok=True)
        (wc.root / f"d{i % 5}/f{i}").write_text(str(i))
    wc.commit()
    wc.start_autocommit(3600)
    try:
        wc.commit()  # the first scan of a tracked copy reads everything
        listed: list[object] = []
        real_scandir = os.scandir

        def counting_scandir(path: Any = ".") -> Any:
            # The copy's scan lists directories by descriptor; the store is elsewhere.
            if isinstance(path, int) or str(path).startswith(str(wc.root)):
                listed.append(path)
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", counting_scandir)
        assert wc.commit().seq is None
        assert listed == []
        (wc.root / "d1/f1").write_text("changed")
        assert wc.commit().files == 1
        assert listed == []
    finally:
        wc.stop_autocommit()


def _record(i: int, pack: int) -> FileRecord:
    return FileRecord(
        64 + i, 10**18 + i, 0o644, f"{i:064x}", (Part("p", f"{pack:064x}", i, 64 + i),)
    )


def _fields(index: Index) -> list[tuple[object, ...]]:
    """Every entry's values, read from copies: the index's own records stay unparsed."""
    copies = [(p, e.copy()) for p, e in index.files.items()]
    return [(p, e.record, e.stat_key, e.racy) for p, e in copies]


def test_an_index_changed_after_loading_saves_every_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows copied from the loaded columns and entries encoded alone, mixed in any order,
    make the index in memory; content objects no file uses any more are dropped."""
    monkeypatch.setattr(index_module, "_DELTA_AT_LEAST", 0)  # many changes: a new base
    index = Index("v" * 32, 7)
    for i in range(400):
        index.files[f"d/f{i:03d}"] = IndexEntry(_record(i, i), (64 + i, i, i, i, 0o644))
    index.files["new-never-committed"] = IndexEntry(None, (1, 2, 3, 4, 0o600), True)
    path = tmp_path / "index"
    index.save(path)
    loaded = Index.load(path)
    loaded.files["d/f003"].stat_key = (1, 1, 1, 1, 0o644)  # restat'ed
    loaded.files["d/f005"].racy = True
    del loaded.files["d/f007"]
    assert loaded.files["d/f009"].record is not None  # parsed
    loaded.files["d/f011"] = IndexEntry(_record(11, 999), (9, 9, 9, 9, 0o644))
    loaded.files["d/f000"] = loaded.files.pop("d/f000")  # moved to the end
    loaded.files["added"] = IndexEntry(_record(1000, 1000), None)
    path2 = tmp_path / "index2"
    loaded.save(path2)
    assert _fields(Index.load(path2)) == _fields(loaded)

    # Most files gone: their packs are dropped from the saved list of content objects.
    for p in [p for p in loaded.files if p.startswith("d/f1") or p.startswith("d/f2")]:
        del loaded.files[p]
    assert any(e._record is None for e in loaded.files.values())
    loaded.save(path2)
    again = Index.load(path2)
    assert _fields(again) == _fields(loaded)
    packs = {part.obj for e in loaded.files.values() if e.record for part in e.record.parts}
    body = path2.read_bytes().split(b"\n", 1)[1]
    (length,) = struct.unpack_from("<Q", body)
    listed = json.loads(body[8 : 8 + length])["objects"]
    assert sorted(name[1:] for name in listed) == sorted(packs)


def test_after_a_save_of_many_new_entries_the_next_save_copies_them(tmp_path: Path) -> None:
    """A new copy, or one after a large commit, holds records made in memory: once saved,
    they are saved again by copying what was written, not encoded one by one."""
    from kvol.index import FORMAT, _Encoded

    def one_by_one(index: Index) -> int:
        table = index._base.table if index._base is not None else None
        return _Encoded(index.files, {}, b"kvol-index", FORMAT, table).one_by_one

    index = Index("v" * 32, 1)
    for i in range(5000):
        index.files[f"d/f{i:05d}"] = IndexEntry(_record(i, i // 100), (64 + i, i, i, i, 0o644))
    index.files["no-record"] = IndexEntry(None, (1, 2, 3, 4, 0o600), True)
    path = tmp_path / "index"
    assert one_by_one(index) == 5001
    index.save(path)
    index.files["d/f00010"].stat_key = (5, 5, 5, 5, 0o644)
    index.files["d/f00020"] = IndexEntry(_record(20, 7777), None)
    assert one_by_one(index) == 3  # the two changed, and the one without a record
    index.save(path)
    assert _fields(Index.load(path)) == _fields(index)
