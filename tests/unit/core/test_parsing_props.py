"""Property tests of what is read back from a store: the codec's framing and the entry and
checkpoint parsers. A damaged or hostile object is rejected with CorruptData, never with
another exception, and what is accepted is always safe to apply."""

from __future__ import annotations

import copy
import json
import math
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvol import codec, paths
from kvol.errors import CorruptData
from kvol.model import (
    HASH_RE,
    DeleteOp,
    Entry,
    FileRecord,
    MkdirOp,
    Part,
    PutOp,
    RmdirOp,
    State,
    UnlinkOp,
    Writer,
)
from tests.unit.core.helpers import props

HASHES = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
NAMES = st.text(alphabet="abcxyz._-", min_size=1, max_size=6).filter(
    lambda s: s not in (".", "..", ".kvol")
)
PATH = st.lists(NAMES, min_size=1, max_size=4).map("/".join)


@st.composite
def records(draw: st.DrawFn) -> FileRecord:
    if draw(st.booleans()):
        length = draw(st.integers(0, 1000))
        parts: tuple[Part, ...] = (Part("p", draw(HASHES), draw(st.integers(0, 10**6)), length),)
    else:
        lengths = draw(st.lists(st.integers(1, 10**7), min_size=1, max_size=4))
        parts = tuple(Part("b", draw(HASHES), 0, n) for n in lengths)
    size = sum(p.length for p in parts)
    mtime = draw(st.integers(0, 2**62))
    return FileRecord(size, mtime, draw(st.integers(0, 0o7777)), draw(HASHES), parts)


OPS = st.one_of(
    st.builds(PutOp, PATH, records()),
    st.builds(DeleteOp, PATH),
    st.builds(MkdirOp, PATH),
    st.builds(UnlinkOp, PATH),
    st.builds(RmdirOp, PATH),
)
ENTRIES = st.builds(
    Entry,
    st.lists(OPS, max_size=3).map(tuple),
    st.floats(0, 2e9, allow_nan=False),
    st.builds(Writer, st.text(max_size=8), st.text(max_size=8), st.integers(1, 2**22)),
    st.integers(0, 10**6),
    st.one_of(st.none(), st.text(max_size=10)),
)

EDGE_VALUES = st.sampled_from(
    [float("inf"), float("-inf"), float("nan"), 2**64, 10**400, -1, 1e308, "", [], {}, True]
)
JSON_LEAVES = st.one_of(
    EDGE_VALUES,
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 5, max_value=2**70),
    st.floats(),  # includes inf and nan, which json round-trips as Infinity / NaN
    st.text(max_size=6),
    st.sampled_from(["../x", "/etc/passwd", ".kvol/config.json", "a\x00b", "put", "del", "dir"]),
    HASHES,
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=8,
)


def locations(node: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document: paths of keys and indexes from the top."""
    found = [here]
    if isinstance(node, dict):
        for key, value in node.items():
            found += locations(value, (*here, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += locations(value, (*here, i))
    return found


@st.composite
def mutated(draw: st.DrawFn, payload: Any) -> Any:
    """``payload`` with a few random replacements, deletions and insertions."""
    doc = copy.deepcopy(payload)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(locations(doc)))
        action = draw(st.sampled_from(["replace", "delete", "insert"]))
        if not where:
            if action == "replace":
                doc = draw(JSON_VALUES)
            continue
        parent = doc
        for step in where[:-1]:
            parent = parent[step]
        last = where[-1]
        if action == "replace":
            parent[last] = draw(JSON_VALUES)
        elif action == "delete":
            del parent[last]
        elif isinstance(parent, list):
            parent.insert(last, draw(JSON_VALUES))
        else:
            parent[draw(st.text(max_size=5))] = draw(JSON_VALUES)
    # Through the real framing, as a stored object would be read.
    return codec.decode("entry", codec.encode("entry", doc))


def assert_safe_record(record: FileRecord) -> None:
    assert record.size >= 0 and 0 <= record.mode <= 0o7777
    assert HASH_RE.match(record.hash)
    # Parts that do not add up to the size are accepted in the log: reading that one
    # file fails (kvol.content.ContentReader), the rest of the volume stays readable.
    for part in record.parts:
        assert part.kind in ("b", "p") and HASH_RE.match(part.obj)
        assert part.offset >= 0 and part.length >= 0
    # Whatever is accepted can be applied to a file: its times fit the system calls.
    assert -(2**63) <= record.mtime_ns < 2**63
    assert record.size < 2**63


def assert_safe_entry(entry: Entry) -> None:
    for op in entry.ops:
        assert paths.check(op.path) == op.path
        if isinstance(op, PutOp):
            assert_safe_record(op.record)
    assert entry.message is None or isinstance(entry.message, str)
    assert isinstance(entry.base, int) and isinstance(entry.writer.pid, int)
    assert math.isfinite(entry.time)
    assert Entry.from_payload(entry.to_payload()) == entry


@props()
@given(ENTRIES)
def test_valid_entries_round_trip(entry: Entry) -> None:
    raw = codec.encode("entry", entry.to_payload())
    assert Entry.from_payload(codec.decode("entry", raw)) == entry


@props(600)
@given(st.data())
def test_mutated_entries_are_rejected_or_safe(data: st.DataObject) -> None:
    entry = data.draw(ENTRIES)
    doc = data.draw(mutated(entry.to_payload()))
    try:
        parsed = Entry.from_payload(doc)
    except CorruptData:
        return
    assert_safe_entry(parsed)


@props(500)
@given(st.data())
def test_mutated_checkpoints_are_rejected_or_safe(data: st.DataObject) -> None:
    state = State(data.draw(st.integers(0, 10**6)))
    for op in data.draw(st.lists(OPS, max_size=6)):
        state.apply(Entry((op,), 0.0, Writer("w", "h", 1), 0), state.seq)
    doc = data.draw(mutated(state.to_payload()))
    try:
        parsed = State.from_payload(doc)
    except CorruptData:
        return
    for path, record in parsed.files.items():
        assert paths.check(path) == path
        assert_safe_record(record)
    for d in parsed.dirs:
        assert paths.check(d) == d
    assert isinstance(parsed.seq, int)


@props(300)
@given(ENTRIES, st.data())
def test_truncated_objects_are_rejected(entry: Entry, data: st.DataObject) -> None:
    raw = codec.encode("entry", entry.to_payload())
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(CorruptData):
        codec.decode("entry", raw[:cut])


@props(500)
@given(ENTRIES, st.data())
def test_bit_flipped_objects_are_rejected(entry: Entry, data: st.DataObject) -> None:
    raw = bytearray(codec.encode("entry", entry.to_payload()))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(CorruptData):
        codec.decode("entry", bytes(raw))


def test_an_object_of_another_kind_is_rejected() -> None:
    raw = codec.encode("checkpoint", State().to_payload())
    with pytest.raises(CorruptData, match="bad header"):
        codec.decode("entry", raw)


def frame(body_text: bytes) -> bytes:
    """An object with a correct header and checksum around any body (a forger's object)."""
    import hashlib

    body = zlib.compress(body_text)
    return f"kvol-entry 1 {hashlib.sha256(body).hexdigest()}\n".encode() + body


def test_deeply_nested_body_is_corrupt_data() -> None:
    with pytest.raises(CorruptData):
        codec.decode("entry", frame(b"[" * 200_000 + b"]" * 200_000))


def test_body_that_is_not_json_is_corrupt_data() -> None:
    with pytest.raises(CorruptData):
        codec.decode("entry", frame(b"\xff\xfe not json"))


@pytest.mark.parametrize(
    "field",
    [
        {"base": float("inf")},
        {"base": 1e400},
        {"time": 10**400},
        {"writer": {"id": "w", "host": "h", "pid": float("inf")}},
        {"time": float("nan")},
    ],
)
def test_out_of_range_numbers_are_corrupt_data(field: dict[str, Any]) -> None:
    payload = Entry((), 1.0, Writer("w", "h", 1), 0).to_payload() | field
    doc = json.loads(json.dumps(payload))
    with pytest.raises(CorruptData):
        Entry.from_payload(doc)


def test_record_with_an_unrepresentable_mtime_is_corrupt_data() -> None:
    payload = Entry((), 1.0, Writer("w", "h", 1), 0).to_payload()
    payload["ops"] = [["put", "f", 0, 10**30, 0o644, "0" * 64, []]]
    with pytest.raises(CorruptData):
        Entry.from_payload(payload)


@props()
@given(files=st.sets(PATH, max_size=30), dirs=st.sets(PATH, max_size=10))
def test_the_directory_counts_of_a_state_are_those_of_every_ancestor(
    files: set[str], dirs: set[str]
) -> None:
    # Counted by parent and then up (State._under_index): the same as counting every
    # proper ancestor of every file and explicit directory one by one.
    record = FileRecord(0, 0, 0o644, "0" * 64, ())
    state = State(1, dict.fromkeys(files, record), set(dirs))
    expected: dict[str, int] = {}
    for p in [*files, *dirs]:
        for a in paths.ancestors(p):
            expected[a] = expected.get(a, 0) + 1
    assert state._under_index() == expected
    for d in expected:
        assert state.is_dir(d)
