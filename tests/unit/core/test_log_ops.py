"""The log operations that delete what a writer saw: a file (``rm``) and an empty directory
(``rmdir``), and the writers in the core that emit them instead of a recursive delete."""

from __future__ import annotations

from typing import Any

from kvol import codec
from kvol.model import (
    DeleteOp,
    Entry,
    FileRecord,
    MkdirOp,
    Op,
    PutOp,
    RmdirOp,
    State,
    UnlinkOp,
    Writer,
)
from kvol.repo import Repo
from tests.unit.core.helpers import upload, volume_tree

WRITER = Writer("w", "host", 1)


def applied(state: State, *ops: Op) -> set[str]:
    touched: set[str] = set()
    state.apply(Entry(tuple(ops), 0.0, WRITER, state.seq), state.seq + 1, touched)
    return touched


def record(size: int = 0) -> FileRecord:
    return FileRecord(size, 0, 0o644, "0" * 64, ())


# -- unlink and rmdir (a deletion names what the writer saw) ----------------------------------


def test_unlink_and_rmdir_round_trip_through_the_entry_format() -> None:
    ops: tuple[Op, ...] = (UnlinkOp("d/f"), RmdirOp("d"), DeleteOp("old"), MkdirOp("m"))
    entry = Entry(ops, 1.0, WRITER, 0)
    payload = codec.decode("entry", codec.encode("entry", entry.to_payload()))
    assert payload["ops"] == [["rm", "d/f"], ["rmdir", "d"], ["del", "old"], ["dir", "m"]]
    assert Entry.from_payload(payload).ops == ops


def test_unlink_removes_a_file_but_never_a_directory() -> None:
    state = State(0, {"f": record(), "d/x": record()}, {"d", "e"})
    assert applied(state, UnlinkOp("f"), UnlinkOp("d"), UnlinkOp("e"), UnlinkOp("nope")) == {"f"}
    assert set(state.files) == {"d/x"}
    assert state.dirs == {"d", "e"}


def test_rmdir_removes_only_an_empty_explicit_directory() -> None:
    state = State(0, {"full/x": record()}, {"full", "empty", "outer", "outer/inner"})
    touched = applied(state, RmdirOp("full"), RmdirOp("empty"), RmdirOp("outer"))
    assert touched == {"empty"}
    assert state.dirs == {"full", "outer", "outer/inner"}
    # Deepest first empties the outer directory too.
    assert applied(state, RmdirOp("outer/inner"), RmdirOp("outer")) == {"outer/inner", "outer"}
    assert state.dirs == {"full"}
    assert state.is_dir("full") and not state.is_dir("outer")


def test_rm_r_of_a_directory_keeps_a_file_another_writer_added_under_it(repo: Repo) -> None:
    base = repo.publish([MkdirOp("d"), upload(repo, "d/seen", b"seen")], 0)
    # Another writer adds a file under d after the deleting writer's base...
    repo.publish([upload(repo, "d/new", b"theirs")], base)
    # ...and the deleting writer names what it saw: d/seen, then d.
    repo.publish([UnlinkOp("d/seen"), RmdirOp("d")], base)
    state = repo.state()
    assert volume_tree(repo) == {"d/new": b"theirs"}
    assert state.is_dir("d")


def test_restore_keeps_files_added_meanwhile_under_a_directory_it_removes(repo: Repo) -> None:
    target = repo.publish([upload(repo, "keep", b"k")], 0)
    repo.publish([MkdirOp("d"), MkdirOp("d/sub"), upload(repo, "d/sub/f", b"f")], target)
    restore_seq = repo.restore(target)
    restored = repo.read_entry(restore_seq)
    assert restored is not None
    assert restored.ops == (UnlinkOp("d/sub/f"), RmdirOp("d/sub"), RmdirOp("d"))
    assert not any(isinstance(op, DeleteOp) for op in restored.ops)
    assert volume_tree(repo) == {"keep": b"k"}
    assert repo.state().dirs == set()
    assert repo.history(1)[0].paths_deleted == 3


def test_history_counts_unlinks_and_rmdirs_as_deletions(repo: Repo) -> None:
    repo.publish([MkdirOp("d"), upload(repo, "d/f", b"f")], 0)
    repo.publish([UnlinkOp("d/f"), RmdirOp("d")], 1)
    assert repo.history(1)[0].paths_deleted == 2


# -- cost: a rewrite touches only its own path --------------------------------------------------


class _NoWholeWalk(dict[str, FileRecord]):
    """Files that refuse to be listed: applying the change must not go through them all."""

    def __iter__(self) -> Any:
        raise AssertionError("the whole state was walked")


def test_rewriting_a_file_does_not_walk_every_file_of_the_state() -> None:
    files = _NoWholeWalk({f"d/f{i}": record() for i in range(100)})
    state = State(0, files, {"d"})
    assert applied(state, PutOp("d/f7", record(5))) == {"d/f7"}
    assert dict.__getitem__(files, "d/f7").size == 5
    assert dict.__len__(files) == 100


def test_a_new_file_where_a_directory_is_still_replaces_the_tree() -> None:
    state = State(0, {"d/x": record(), "d/y/z": record(), "e": record()}, {"d/y"})
    touched = applied(state, PutOp("d", record(3)))
    assert touched == {"d", "d/x", "d/y/z", "d/y"}
    assert set(state.files) == {"d", "e"} and state.dirs == set()
