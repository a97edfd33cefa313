"""The index saved as a base plus deltas, against a plain model of what it holds.

Any sequence of changes, saves (each a delta or a whole base, the threshold set low so
both happen), loads (a process starting again, its entries parsed lazily from the
columns), copies made from a saved index (a new overlay copy) and a crash between writing
a new base and removing the delta beside it: a load always gives back exactly what the
last save held.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from kvol import index as index_module
from kvol.index import Index, IndexEntry, SigTuple, delta_path
from kvol.model import FileRecord, Part

Held = tuple[FileRecord | None, SigTuple | None, bool]

_NAMES = ["a", "b", "ü", "d d"]
paths = st.lists(st.sampled_from(_NAMES), min_size=1, max_size=3).map("/".join)
hashes = st.sampled_from(["1" * 64, "2" * 64, "3" * 64])


@st.composite
def records(draw: Any) -> FileRecord:
    # A packed file is one range of its pack; any other is whole blobs (none if empty).
    if draw(st.booleans()):
        lengths = [draw(st.integers(1, 5000))]
        parts: tuple[Part, ...] = (Part("p", draw(hashes), draw(st.integers(0, 9)), lengths[0]),)
    else:
        lengths = draw(st.lists(st.integers(1, 5000), max_size=3))
        parts = tuple(Part("b", draw(hashes), 0, n) for n in lengths)
    # Now and then parts that do not add up to the size, as the log may hold.
    return FileRecord(
        sum(lengths) + draw(st.sampled_from([0, 0, 0, 7])),
        draw(st.integers(-5, 2**40)),
        draw(st.sampled_from([0o644, 0o755])),
        draw(hashes),
        parts,
    )


sigs = st.none() | st.tuples(
    st.integers(0, 2**33),
    st.integers(0, 2**62),
    st.integers(1, 2**40),
    st.integers(0, 2**62),
    st.sampled_from([0o644, 0o600, 0o4755]),
)
maybe_records = st.none() | records()


class IndexMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.monkeypatch = pytest.MonkeyPatch()
        # Deltas of up to 3 changes: small indexes go through both kinds of save.
        self.monkeypatch.setattr(index_module, "_DELTA_AT_LEAST", 3)
        self.root = Path(_TMP) / f"m{id(self)}"
        self.root.mkdir(parents=True)
        self.copies = 0

    @initialize()
    def start(self) -> None:
        self.path = self.root / "index"
        self.live = Index("0" * 32, 1)
        self.files: dict[str, Held] = {}
        self.dirs: set[str] = set()
        self.explicit: set[str] = set()
        self.base, self.ahead = 1, 0
        self.saved: tuple[Any, ...] | None = None

    def teardown(self) -> None:
        self.monkeypatch.undo()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- changes ----------------------------------------------------------------------

    # Each change goes through ``files`` (every entry made, as a scan does) or, ``lazily``,
    # through the calls a reload makes (an entry made only for the path changed).

    @rule(path=paths, record=maybe_records, sig=sigs, racy=st.booleans(), lazily=st.booleans())
    def put(
        self, path: str, record: FileRecord | None, sig: SigTuple | None, racy: bool, lazily: bool
    ) -> None:
        if lazily:
            self.live.put(path, IndexEntry(record, sig, racy))
        else:
            self.live.files[path] = IndexEntry(record, sig, racy)
        self.files[path] = (record, sig, racy)

    @precondition(lambda self: self.files)
    @rule(data=st.data(), record=maybe_records, lazily=st.booleans())
    def new_record(self, data: st.DataObject, record: FileRecord | None, lazily: bool) -> None:
        path = data.draw(st.sampled_from(sorted(self.files)))
        entry = self.live.entry(path) if lazily else self.live.files[path]
        assert entry is not None
        entry.record = record
        _, sig, racy = self.files[path]
        self.files[path] = (record, sig, racy)

    @precondition(lambda self: self.files)
    @rule(data=st.data(), sig=sigs, racy=st.booleans(), lazily=st.booleans())
    def new_stat(self, data: st.DataObject, sig: SigTuple | None, racy: bool, lazily: bool) -> None:
        # As a commit refreshes a touched file: its record (maybe never parsed) stays.
        path = data.draw(st.sampled_from(sorted(self.files)))
        entry = self.live.entry(path) if lazily else self.live.files[path]
        assert entry is not None
        entry.stat_key, entry.racy = sig, racy
        record, _, _ = self.files[path]
        self.files[path] = (record, sig, racy)

    @precondition(lambda self: self.files)
    @rule(data=st.data(), lazily=st.booleans())
    def remove(self, data: st.DataObject, lazily: bool) -> None:
        path = data.draw(st.sampled_from(sorted(self.files)))
        if lazily:
            self.live.drop(path)
        else:
            del self.live.files[path]
        del self.files[path]

    @rule(path=paths, explicit=st.booleans(), add=st.booleans())
    def directory(self, path: str, explicit: bool, add: bool) -> None:
        for held, live in ((self.dirs, self.live.dirs), (self.explicit, self.live.explicit_dirs)):
            if held is self.explicit and not explicit:
                continue
            if add:
                held.add(path)
                live.add(path)
            else:
                held.discard(path)
                live.discard(path)

    @rule(base=st.integers(1, 2**40), ahead=st.integers(0, 2**40))
    def moved(self, base: int, ahead: int) -> None:
        self.live.base, self.live.ahead = self.base, self.ahead = base, ahead

    # -- saves, loads, copies -------------------------------------------------------------

    def _snapshot(self) -> tuple[Any, ...]:
        return (dict(self.files), set(self.dirs), set(self.explicit), self.base, self.ahead)

    @rule()
    def save(self) -> None:
        self.live.save(self.path)
        self.saved = self._snapshot()

    @rule()
    def save_then_crash_before_the_old_delta_goes(self) -> None:
        # A whole save writes its base, then removes the delta of the base before; a
        # crash between leaves that delta beside a base it does not belong to.
        delta = delta_path(self.path)
        old = delta.read_bytes() if delta.exists() else None
        self.live.save(self.path)
        self.saved = self._snapshot()
        if old is not None and not delta.exists():
            delta.write_bytes(old)

    @precondition(lambda self: self.saved is not None)
    @rule()
    def restart(self) -> None:
        # A new process: what was not saved is gone; records are parsed when asked for.
        self.live = Index.load(self.path)
        assert self.saved is not None
        files, dirs, explicit, self.base, self.ahead = self.saved
        self.files, self.dirs, self.explicit = dict(files), set(dirs), set(explicit)

    @rule()
    def copied(self) -> None:
        # A new overlay copy, made from a snapshot's index; from here on the copy is the
        # one changed and saved (what is not saved yet is the copy's too).
        self.copies += 1
        twin_path = self.root / f"copy-{self.copies}" / "index"
        twin_path.parent.mkdir()
        self.live = self.live.copy_saved_at(twin_path, saved_at=self.path)
        self.path = twin_path
        if self.saved is None:  # never saved: the copy is saved whole
            self.saved = self._snapshot()

    # -- what must hold -------------------------------------------------------------------

    @invariant()
    def live_is_the_model(self) -> None:
        if not hasattr(self, "live"):
            return
        _check(self.live, self._snapshot(), "the index in memory")

    @invariant()
    def the_committed_view_and_the_kept_out_files_are_the_model(self) -> None:
        if not hasattr(self, "live"):
            return
        committed = {p: r for p, (r, _, _) in self.files.items() if r is not None}
        assert dict(self.live.committed_state().files) == committed
        kept_out = {p for p, (r, sig, _) in self.files.items() if r is not None and sig is None}
        assert sorted(self.live.kept_out()) == sorted(kept_out)

    @invariant()
    def a_load_gives_the_last_save(self) -> None:
        if getattr(self, "saved", None) is None:
            return
        assert self.saved is not None
        _check(Index.load(self.path), self.saved, "the index loaded")


def _check(index: Index, held: tuple[Any, ...], what: str) -> None:
    files, dirs, explicit, base, ahead = held
    # Read without making the index's entries: the next steps find it as it was (rows
    # of a load stay rows until a change or ``files`` asks for their entries).
    got = {}
    for path, value in index._entries.items():
        if isinstance(value, IndexEntry):
            entry = value
        else:
            assert index._rows is not None
            entry = index_module._loaded_entry(index._rows, value)
        got[path] = (entry.record, entry.stat_key, entry.racy)
    assert got == files, what
    assert (index.dirs, index.explicit_dirs, index.base, index.ahead) == (
        dirs,
        explicit,
        base,
        ahead,
    ), what


_TMP = ""


@pytest.fixture(autouse=True)
def _machine_dir(tmp_path: Path) -> None:
    global _TMP
    _TMP = str(tmp_path)


TestIndexMachine = IndexMachine.TestCase
TestIndexMachine.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
