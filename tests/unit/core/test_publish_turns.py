"""Writers of one volume on one machine take turns at its log (kvol/publish_turns.py)."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import pytest

from kvol import publish_turns
from kvol.model import PutOp
from kvol.repo import Repo
from tests.unit.core.helpers import CountingStore, upload, volume_tree


@pytest.fixture(autouse=True)
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv(publish_turns.SWITCH, raising=False)
    (tmp_path / "run").mkdir(mode=0o700)
    return tmp_path / "run"


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_second_writer_waits_for_the_first_to_finish() -> None:
    events: list[str] = []
    inside = threading.Event()

    def second() -> None:
        inside.wait()
        with publish_turns.turn("file:///s", "v") as held:
            events.append(f"second in, held={held}")

    thread = threading.Thread(target=second)
    thread.start()
    with publish_turns.turn("file:///s", "v") as held:
        assert held
        inside.set()
        time.sleep(0.3)  # the second writer is waiting meanwhile
        events.append("first out")
    thread.join(5)
    assert events == ["first out", "second in, held=True"]


def test_writers_of_other_volumes_or_stores_do_not_wait() -> None:
    with publish_turns.turn("file:///s", "v"):
        for url, volume in (("file:///s", "w"), ("file:///t", "v")):
            started = time.monotonic()
            with publish_turns.turn(url, volume, wait_seconds=5) as held:
                assert held
            assert time.monotonic() - started < 1


def test_a_writer_that_waited_too_long_goes_on_and_leaves_no_descriptor_behind() -> None:
    before = _fds()
    with publish_turns.turn("file:///s", "v"):
        started = time.monotonic()
        with publish_turns.turn("file:///s", "v", wait_seconds=0.2) as held:
            assert not held
        assert 0.2 <= time.monotonic() - started < 2
    # The abandoned wait gets the lock once it is free, and lets it go at once.
    deadline = time.monotonic() + 5
    while _fds() != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _fds() == before
    with publish_turns.turn("file:///s", "v", wait_seconds=1) as held:
        assert held


def test_no_turns_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(publish_turns.SWITCH, "off")
    with publish_turns.turn("file:///s", "v") as held:
        assert not held
    monkeypatch.delenv(publish_turns.SWITCH)
    with publish_turns.turn("file:///s", "v") as held:
        assert held


def test_locks_live_only_in_a_directory_of_this_users_alone(
    lock_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = lock_dir / "kvol" / "publish-turns"
    assert publish_turns.lock_dir() == str(runtime)
    # A directory others may write in could hold a lock file of theirs: the next place.
    runtime.chmod(0o777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert publish_turns.lock_dir() == str(tmp_path / "cache" / "kvol" / "publish-turns")
    # No cache directory to be had (a read-only home, as in the node plugin's
    # container): the user's own directory in the temporary directory.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-directory"))
    (tmp_path / "not-a-directory").write_bytes(b"")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    own = tmp_path / "tmp" / f"kvol-{os.geteuid()}"
    assert publish_turns.lock_dir() == str(own / "publish-turns")
    assert own.stat().st_mode & 0o777 == 0o700
    # One made there by someone else, writable by all: no turns at all.
    (own / "publish-turns").rmdir()
    own.chmod(0o777)
    assert publish_turns.lock_dir() is None
    with publish_turns.turn("file:///s", "v") as held:
        assert not held


def test_writers_in_threads_each_write_their_entry_once(repo: Repo, store: CountingStore) -> None:
    # Taking turns, writers of this machine do not race for positions: one conditional
    # write per commit, and one more for the writer that finds the head one past its base
    # (lost by one, it tries the next position rather than listing the log). Racing
    # writers fail about one conditional write per commit that lands while they try.
    puts: dict[str, PutOp] = {
        f"t{i}": upload(repo, f"t{i}", f"thread {i}".encode()) for i in range(16)
    }
    barrier = threading.Barrier(len(puts))
    seqs: list[int] = []

    def publish(op: PutOp) -> None:
        barrier.wait()
        seqs.append(repo.publish([op], base=0))

    store.reset()
    threads = [threading.Thread(target=publish, args=(op,)) for op in puts.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(seqs) == list(range(1, 17))
    assert store.count("put_if_absent", repo.keys.log_prefix) == len(puts) + 1
    assert volume_tree(repo) == {p: f"thread {p[1:]}".encode() for p in puts}


def test_a_process_forked_during_a_turn_does_not_keep_it() -> None:
    with publish_turns.turn("file:///s", "v") as held:
        assert held
        child = os.fork()
        if child == 0:  # a worker that outlives the turn, as a data loader's does
            time.sleep(3)
            os._exit(0)
    try:
        started = time.monotonic()
        with publish_turns.turn("file:///s", "v", wait_seconds=2) as held:
            assert held
        assert time.monotonic() - started < 1
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
