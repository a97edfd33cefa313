"""The working copy index on disk: round trips, lazily parsed records, refusals."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvol import index as index_module
from kvol import index_columns
from kvol.errors import CorruptData
from kvol.index import Index, IndexEntry, Signature, _encode, delta_path
from kvol.model import FileRecord, Part
from kvol.paths import RESERVED

H1, H2, PACK = "a" * 64, "b" * 64, "c" * 64


def sample() -> Index:
    index = Index("0" * 32, 7)
    index.files["a.txt"] = IndexEntry(
        FileRecord(5, 11, 0o644, H1, (Part("p", PACK, 0, 5),)), Signature(5, 11, 3, 12, 0o644)
    )
    index.files["big/blob"] = IndexEntry(
        FileRecord(30, 21, 0o755, H2, (Part("b", H1, 0, 10), Part("b", H2, 0, 20))),
        Signature(30, 21, 4, 22, 0o755),
        racy=True,
    )
    index.files["new/ünï\ncode"] = IndexEntry(None, Signature(1, 2, 5, 3, 0o600))
    index.files["gone"] = IndexEntry(FileRecord(0, 1, 0o644, H1, ()), None)
    index.dirs = {"big", "new"}
    index.explicit_dirs = {"new"}
    return index


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = tmp_path / "index"
    original = sample()
    original.save(path)
    loaded = Index.load(path)
    assert (loaded.volume_id, loaded.base) == (original.volume_id, original.base)
    assert loaded.dirs == original.dirs and loaded.explicit_dirs == original.explicit_dirs
    assert loaded.files == original.files


def test_records_never_parsed_are_saved_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "index"
    sample().save(path)
    first = path.read_bytes()
    Index.load(path).save(path)  # no record was touched: written back from the columns
    assert path.read_bytes() == first
    loaded = Index.load(path)
    assert loaded.files["big/blob"].record == sample().files["big/blob"].record


def same_index(a: Index, b: Index) -> bool:
    return (a.volume_id, a.base, a.ahead, a.dirs, a.explicit_dirs, a.files) == (
        b.volume_id,
        b.base,
        b.ahead,
        b.dirs,
        b.explicit_dirs,
        b.files,
    )


def changed(index: Index) -> None:
    """A few changes of every kind: a record, a stat, a new file, a removed one, dirs."""
    index.files["a.txt"].record = FileRecord(6, 12, 0o600, H2, (Part("b", H2, 0, 6),))
    index.files["big/blob"].sig = Signature(30, 21, 4, 99, 0o755)
    index.files["new/file"] = IndexEntry(FileRecord(1, 1, 0o644, H1, (Part("b", H1, 0, 1),)), None)
    del index.files["gone"]
    index.dirs.discard("big")
    index.explicit_dirs.add("other")
    index.base, index.ahead = 9, 8


def test_a_few_changes_are_saved_as_a_delta_beside_the_base(tmp_path: Path) -> None:
    path = tmp_path / "index"
    index = sample()
    index.save(path)
    base = path.read_bytes()
    changed(index)
    index.save(path)
    # The base is as it was; the delta beside it holds the changes.
    assert path.read_bytes() == base
    assert delta_path(path).exists()
    assert same_index(Index.load(path), index)
    # A delta holds every change since the base, not since the last save.
    index.files["later"] = IndexEntry(None, Signature(1, 2, 3, 4, 0o644))
    index.save(path)
    assert path.read_bytes() == base
    assert same_index(Index.load(path), index)
    # Saved again from what was loaded: the same.
    loaded = Index.load(path)
    loaded.save(path)
    assert same_index(Index.load(path), index)


def test_many_changes_write_the_base_whole_and_drop_the_delta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Entries without a record (files never committed) are in every delta: 3 here.
    monkeypatch.setattr(index_module, "_DELTA_AT_LEAST", 3)
    path = tmp_path / "index"
    index = sample()
    index.save(path)
    index.files["one"] = IndexEntry(None, Signature(1, 2, 3, 4, 0o644))
    index.save(path)
    assert delta_path(path).exists()
    base = path.read_bytes()
    changed(index)
    index.save(path)
    assert path.read_bytes() != base
    assert not delta_path(path).exists()
    assert same_index(Index.load(path), index)
    # The next few changes are a delta against the new base.
    index.files["two"] = IndexEntry(None, Signature(1, 2, 3, 4, 0o644))
    index.save(path)
    assert delta_path(path).exists()
    assert same_index(Index.load(path), index)


def test_a_delta_of_an_older_base_is_never_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A crash between writing a new base and removing the old delta leaves both.
    monkeypatch.setattr(index_module, "_DELTA_AT_LEAST", 2)
    path = tmp_path / "index"
    index = sample()
    index.save(path)
    index.files["a.txt"].sig = Signature(5, 11, 3, 99, 0o644)
    index.save(path)
    stale = delta_path(path).read_bytes()
    changed(index)
    index.save(path)
    assert not delta_path(path).exists()
    delta_path(path).write_bytes(stale)
    assert same_index(Index.load(path), index)
    # Not even over a base of the very same entries: every base is told apart.
    reverted = sample()
    reverted.save(path)
    again = sample()
    again.files["a.txt"].sig = Signature(5, 11, 3, 99, 0o644)
    again.save(path)  # a new base (no base was loaded): the earlier delta is not its
    delta_path(path).write_bytes(stale)
    assert same_index(Index.load(path), again)


def test_a_tampered_delta_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index"
    index = sample()
    index.save(path)
    changed(index)
    index.save(path)
    raw = bytearray(delta_path(path).read_bytes())
    raw[-3] ^= 1
    delta_path(path).write_bytes(bytes(raw))
    with pytest.raises(CorruptData, match="delta failed its checksum"):
        Index.load(path)


def test_a_delta_with_an_unsafe_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index"
    index = sample()
    index.save(path)
    index.files["../escape"] = IndexEntry(None, None)
    index.save(path)
    with pytest.raises(CorruptData, match="unsafe path"):
        Index.load(path)


def test_an_index_of_the_previous_format_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "index"
    index = sample()
    # Format 2 is format 3 without deltas (the digest covers the body only).
    path.write_bytes(_encode(index).replace(b"kvol-index 3 ", b"kvol-index 2 ", 1))
    loaded = Index.load(path)
    assert same_index(loaded, index)
    # Its first save writes it whole, in the new format: a version that reads only the
    # previous format refuses it rather than read it without a delta.
    changed(loaded)
    loaded.save(path)
    assert path.read_bytes().startswith(b"kvol-index 3 ")
    assert not delta_path(path).exists()
    assert same_index(Index.load(path), loaded)


def test_known_content_finds_parts_by_content_id(tmp_path: Path) -> None:
    path = tmp_path / "index"
    sample().save(path)
    known = Index.load(path).known_content()
    assert known.get(H1) in ((Part("p", PACK, 0, 5),), ())
    assert known.get(H2) == (Part("b", H1, 0, 10), Part("b", H2, 0, 20))
    assert known.get("d" * 64) is None


def test_known_content_kept_with_the_index_trusts_only_what_is_still_there(
    tmp_path: Path,
) -> None:
    path = tmp_path / "index"
    sample().save(path)
    index = Index.load(path)
    known = index.known_content()
    assert known.get(H2) is not None  # builds the table
    assert index.known_content() is known  # kept for the next commit
    # The file changed in place (as a reload writes another writer's version) or went:
    # the table still names it, and is no longer trusted for it.
    index.files["big/blob"].record = FileRecord(3, 1, 0o644, "e" * 64, (Part("b", "e" * 64, 0, 3),))
    assert known.get(H2) is None
    del index.files["big/blob"]
    assert known.get(H2) is None
    # A file this copy published is found from then on.
    fresh = IndexEntry(FileRecord(4, 1, 0o644, "f" * 64, (Part("b", "f" * 64, 0, 4),)), None)
    index.files["published"] = fresh
    known.note("published", fresh)
    assert known.get("f" * 64) == (Part("b", "f" * 64, 0, 4),)


def test_known_content_of_a_loaded_index_is_searched_in_its_rows_then_tabled(
    tmp_path: Path,
) -> None:
    """The first lookups read the loaded column of content ids (no entry made but the
    one found, no table); a row whose file changed since is not trusted; past a few
    lookups the table is built and answers the same."""
    from kvol.index import _SEARCHES_BEFORE_TABLE

    path = tmp_path / "index"
    sample().save(path)
    index = Index.load(path)
    known = index.known_content()
    assert known.get(H2) == (Part("b", H1, 0, 10), Part("b", H2, 0, 20))
    assert known._by_hash is None
    assert [p for p, v in index._entries.items() if not isinstance(v, int)] == ["big/blob"]
    # Bytes of two rows' ids side by side (not at a row's start) are no content id.
    assert known.get("a" * 32 + "b" * 32) is None
    index.put("big/blob", IndexEntry(FileRecord(3, 1, 0o644, "e" * 64, ()), None))
    assert known.get(H2) is None  # its row is stale
    assert known.get("e" * 64) == ()  # the entry made since is searched too
    index.drop("big/blob")
    assert known.get("e" * 64) is None
    assert known.get(H1) is not None
    for _ in range(_SEARCHES_BEFORE_TABLE):
        known.get("d" * 64)
    assert known._by_hash is not None
    assert index._rows is not None  # the table came from the rows: no entry made of them
    assert known.get(H1) is not None
    assert known.get(H2) is None and known.get("e" * 64) is None


def test_a_flipped_byte_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index"
    sample().save(path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptData, match="checksum"):
        Index.load(path)


@pytest.mark.parametrize("bad", ["../escape", "a/../b", "/abs", "a//b", "a/", ".", ".kvol/x"])
def test_unsafe_paths_are_refused(tmp_path: Path, bad: str) -> None:
    index = sample()
    index.files[bad] = IndexEntry(None, None)
    path = tmp_path / "index"
    path.write_bytes(_encode(index))
    with pytest.raises(CorruptData, match="unsafe path"):
        Index.load(path)


@given(st.lists(st.lists(st.sampled_from(["a", ".", "..", "", ".kvol", "b.c"]), max_size=4)))
def test_the_unsafe_path_check_is_the_per_component_check(
    components: list[list[str]],
) -> None:
    paths = ["/".join(parts) for parts in components] or [""]
    expected = any(
        any(c in ("", ".", "..") for c in path.split("/")) or path.split("/")[0] == RESERVED
        for path in paths
    )
    assert index_columns.unsafe_paths("\x00".join(paths)) == expected


def tampered(index: Index, paths: bytes | None = None, nparts: int | None = None) -> bytes:
    """``index`` encoded with its paths section replaced, or its first row's part count
    set, and a digest that matches (as a writer with a bug, not a flipped bit, would)."""
    from array import array

    from kvol.index_columns import FORMAT, MAGIC, encode_sections, read_sections

    _, _, header, sections = read_sections(_encode(index), MAGIC, (b"3",))
    ints = array("q", bytes(sections[2]))
    if nparts is not None:
        ints[9] = nparts
    digest, pieces = encode_sections(
        header,
        bytes(sections[1]) if paths is None else paths,
        ints,
        bytearray(sections[3]),
        array("q", bytes(sections[4])),
    )
    return b"%s %d %s\n" % (MAGIC, FORMAT, digest.encode()) + b"".join(pieces)


def test_an_index_holding_a_path_twice_is_refused(tmp_path: Path) -> None:
    index = sample()
    path = tmp_path / "index"
    path.write_bytes(tampered(index, paths=b"\x00".join([b"a.txt", b"a.txt", b"x", b"y"])))
    with pytest.raises(CorruptData, match="path twice"):
        Index.load(path)


@pytest.mark.parametrize("nparts", [-1, 7])
def test_an_index_whose_parts_do_not_add_up_is_refused(tmp_path: Path, nparts: int) -> None:
    path = tmp_path / "index"
    path.write_bytes(tampered(sample(), nparts=nparts))
    with pytest.raises(CorruptData, match="parts are malformed"):
        Index.load(path)


def test_a_record_whose_parts_do_not_add_up_round_trips(tmp_path: Path) -> None:
    # The log holds such records (older versions published them) and so does every
    # snapshot's index built from its state: reading that one file fails, not the copy.
    index = sample()
    short = FileRecord(6, 11, 0o644, H1, (Part("p", PACK, 0, 5),))
    index.files["a.txt"].record = short
    path = tmp_path / "index"
    index.save(path)
    assert Index.load(path).files["a.txt"].record == short


def test_a_packed_record_of_two_parts_fails_when_parsed(tmp_path: Path) -> None:
    # What neither the log nor kvol ever holds: refused like a record read from the store.
    index = sample()
    two = (Part("p", PACK, 0, 3), Part("p", PACK, 3, 2))
    index.files["a.txt"].record = FileRecord(5, 11, 0o644, H1, two)
    path = tmp_path / "index"
    index.save(path)
    loaded = Index.load(path)
    with pytest.raises(CorruptData):
        _ = loaded.files["a.txt"].record


def test_first_format_is_still_read(tmp_path: Path) -> None:
    payload = {
        "format": 1,
        "volume_id": "0" * 32,
        "base": 3,
        "files": {"a": [[5, 1, 420, H1, [["p", PACK, 0, 5]]], [5, 1, 2, 3, 420], False]},
        "dirs": [],
        "explicit_dirs": [],
    }
    path = tmp_path / "index"
    path.write_bytes(zlib.compress(json.dumps(payload).encode()))
    loaded = Index.load(path)
    assert loaded.base == 3
    assert loaded.files["a"].sig == Signature(5, 1, 2, 3, 420)
    assert loaded.files["a"].record == FileRecord(5, 1, 420, H1, (Part("p", PACK, 0, 5),))


def test_garbage_is_corrupt_data(tmp_path: Path) -> None:
    path = tmp_path / "index"
    path.write_bytes(b"kvol-index 2 00\nnot really")
    with pytest.raises(CorruptData):
        Index.load(path)
    path.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CorruptData):
        Index.load(path)


def test_copy_keeps_values_and_is_independent(tmp_path: Path) -> None:
    path = tmp_path / "index"
    sample().save(path)
    loaded = Index.load(path)
    twin = loaded.files["big/blob"].copy()
    assert twin == loaded.files["big/blob"]
    twin.racy = False
    twin.sig = Signature(0, 0, 0, 0, 0)
    assert loaded.files["big/blob"].racy is True
    assert loaded.files["big/blob"].sig == Signature(30, 21, 4, 22, 0o755)


def test_a_copy_takes_the_saved_files_and_refuses_another_base(tmp_path: Path) -> None:
    index = sample()
    index.save(tmp_path / "index")
    changed(index)
    index.save(tmp_path / "index")  # a delta beside the base
    (tmp_path / "moved").mkdir()
    for name in ("index", delta_path(tmp_path / "index").name):
        (tmp_path / name).rename(tmp_path / "moved" / name)
    twin = index.copy_saved_at(tmp_path / "twin", saved_at=tmp_path / "moved" / "index")
    assert (tmp_path / "twin").read_bytes() == (tmp_path / "moved" / "index").read_bytes()
    assert same_index(Index.load(tmp_path / "twin"), index) and same_index(twin, index)
    # Bytes that are not the base this index was saved as: the copy is written whole.
    other = tmp_path / "other"
    sample().save(other)
    twin = index.copy_saved_at(tmp_path / "twin2", saved_at=other)
    assert not delta_path(tmp_path / "twin2").exists()
    assert same_index(Index.load(tmp_path / "twin2"), index)


def loaded_counting(
    path: Path, monkeypatch: pytest.MonkeyPatch, reader: str
) -> tuple[Index, list[int]]:
    """sample() saved at ``path`` and loaded, and the rows its function ``reader``
    (one that reads a row of the loaded columns) is called for from now on."""
    sample().save(path)
    loaded = Index.load(path)
    rows: list[int] = []
    read = getattr(index_module, reader)

    def counting(table: object, row: int) -> object:
        rows.append(row)
        return read(table, row)

    monkeypatch.setattr(index_module, reader, counting)
    return loaded, rows


def test_a_loaded_index_makes_entries_only_for_the_paths_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a reload of a few files in a large copy asks of the index it just loaded.
    path = tmp_path / "index"
    loaded, made = loaded_counting(path, monkeypatch, "_loaded_entry")
    assert loaded.kept_out() == ["gone"]  # a record, and no signature
    assert sorted(loaded.committed_state().files) == ["a.txt", "big/blob", "gone"]
    assert loaded.holds("new/ünï\ncode") and not loaded.holds("missing")
    assert loaded.entry("missing") is None
    assert loaded.entry("big/blob") == sample().files["big/blob"]
    added = IndexEntry(FileRecord(1, 2, 0o600, H2, (Part("b", H2, 0, 1),)), (1, 2, 9, 3, 0o600))
    loaded.put("added", added)
    loaded.drop("gone")
    assert len(made) == 1  # big/blob's, and no other
    loaded.save(path)
    # Two changes: a delta beside the same base, of them alone (big/blob is as loaded).
    _, _, header, _ = index_columns.read_sections(
        delta_path(path).read_bytes(), index_columns.DELTA_MAGIC, (b"1",)
    )
    assert (header["count"], header["removed"]) == (1, ["gone"])
    assert len(made) == 1
    expected = sample()
    del expected.files["gone"]
    expected.files["added"] = added
    assert same_index(Index.load(path), expected) and same_index(loaded, expected)


def test_committed_files_parse_a_record_only_when_it_is_looked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded, parsed = loaded_counting(tmp_path / "index", monkeypatch, "row_record")
    files = loaded.committed_state().files
    # An entry of a file never committed has no record: not a file of the volume.
    assert sorted(files) == ["a.txt", "big/blob", "gone"]
    assert "new/ünï\ncode" not in files and len(files) == 3
    assert parsed == []
    assert files["big/blob"] == sample().files["big/blob"].record
    assert files["big/blob"] == sample().files["big/blob"].record
    assert len(parsed) == 1  # once, and only the one looked up

    # Changes stay in the mapping; the index keeps its entries.
    record = FileRecord(1, 2, 0o600, H2, (Part("b", H2, 0, 1),))
    files["a.txt"] = record
    files["added"] = record
    del files["gone"]
    assert dict(files) == {
        "a.txt": record,
        "added": record,
        "big/blob": sample().files["big/blob"].record,
    }
    assert loaded.files["a.txt"].record == sample().files["a.txt"].record
    assert "gone" in loaded.files and "added" not in loaded.files


def test_a_saved_base_leaves_records_and_signatures_in_its_rows(tmp_path: Path) -> None:
    # After a commit of many files the index holds no parsed record nor signature tuple
    # per file (they are most of a large commit's peak memory); asked for, each is read
    # back from the row as it was.
    index = sample()
    index.save(tmp_path / "index")
    expected = sample()
    for path, entry in index.files.items():
        if entry.has_record:
            assert entry._record is None
            assert entry._key is index_module._IN_ROW or entry._key is None
        assert entry == expected.files[path]
    assert same_index(Index.load(tmp_path / "index"), expected)
