"""Many processes on one machine committing at once to one volume in a shared store."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from kvol import publish_turns
from kvol.catalog import Catalog
from kvol.model import Entry, PutOp
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy
from tests.integration.core import workers
from tests.unit.core.helpers import CountingStore, log_seqs, tree, volume_tree, write

PROCESSES = 8
ROUNDS = 5


def entries(repo: Repo, total: int) -> list[tuple[int, Entry]]:
    found = []
    for seq in range(1, total + 1):
        entry = repo.read_entry(seq)
        assert entry is not None
        found.append((seq, entry))
    return found


@pytest.mark.parametrize("turns", ["on", "off"])
def test_many_processes_committing_at_once(
    repo: Repo, store: CountingStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, turns: str
) -> None:
    # "off": racing for positions, as writers on different machines do (the processes of
    # one machine take turns: kvol.publish_turns).
    monkeypatch.setenv(publish_turns.SWITCH, turns)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    calls = {
        i: (
            workers.commit_rounds,
            (str(store.root), repo.volume_id, str(tmp_path / f"wc{i}"), i, ROUNDS, barrier),
        )
        for i in range(PROCESSES)
    }
    results = list(workers.run_all(calls, ctx, timeout=120).values())

    total = PROCESSES * ROUNDS
    # Every commit landed at its own position, and the log has no gap.
    seqs = [seq for done in results for _, seq in done]
    assert sorted(s for s in seqs if s is not None) == list(range(1, total + 1))
    assert log_seqs(store, repo.volume_id) == list(range(1, total + 1))
    for done in results:
        mine = [seq for _, seq in done]
        assert mine == sorted(mine), "a writer's commits are in its order"

    # The writers really raced: commits landed past positions others had taken.
    assert any(entry.base < seq - 1 for seq, entry in entries(repo, total))

    files = volume_tree(repo)
    # Every distinct file landed.
    for i in range(PROCESSES):
        for r in range(ROUNDS):
            assert files[f"p{i}/r{r}"] == f"writer {i} round {r}".encode()
    assert len(files) == total + 1

    # The shared file is the content of the last entry, by seq, that wrote it.
    last_write = None
    for _seq, entry in entries(repo, total):
        for op in entry.ops:
            if isinstance(op, PutOp) and op.path == "shared.txt":
                last_write = op.record
    assert last_write is not None
    assert files["shared.txt"] == repo.reader().read(last_write)
    assert repo.state().files["shared.txt"] == last_write


def test_two_copies_in_two_processes_with_separate_index_dirs(
    repo: Repo, store: CountingStore, tmp_path: Path
) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    calls = {
        me: (
            workers.pair_member,
            (
                str(store.root),
                repo.volume_id,
                str(tmp_path / f"copy-{me}"),
                str(tmp_path / f"meta-{me}"),
                me,
                barrier,
            ),
        )
        for me in ("a", "b")
    }
    found = workers.run_all(calls, ctx, timeout=120)
    a, b = found["a"], found["b"]

    assert sorted([a["seq"], b["seq"]]) == [1, 2]
    winner = "a" if a["seq"] == 2 else "b"
    expected = {"a.txt": "from a", "b.txt": "from b", "both.txt": f"both, from {winner}"}
    # Each copy, once reloaded, holds both writers' files; the index lives elsewhere.
    assert a["files"] == expected
    assert b["files"] == expected
    assert a["to_seq"] == b["to_seq"] == 2
    assert {k: v.decode() for k, v in volume_tree(repo).items()} == expected
    for me in ("a", "b"):
        assert not (tmp_path / f"copy-{me}" / ".kvol").exists()
        assert (tmp_path / f"meta-{me}" / "index").is_file()


def test_processes_committing_the_same_copy_publish_each_change_once(
    repo: Repo, store: CountingStore, tmp_path: Path
) -> None:
    root = tmp_path / "wc"
    wc = WorkingCopy.create(repo, root)
    for i in range(40):
        write(root, f"d{i % 4}/f{i}", f"file {i}")
    wc.close(final_commit=False)

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    calls = {
        i: (workers.commit_shared_copy, (str(store.root), str(root), barrier)) for i in range(4)
    }
    seqs = workers.run_all(calls, ctx, timeout=120)

    assert sorted(s for s in seqs.values() if s is not None) == [1]
    assert log_seqs(store, repo.volume_id) == [1]
    assert volume_tree(repo) == tree(root)


def test_processes_creating_one_name_at_once_get_one_volume(
    store: CountingStore, tmp_path: Path
) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(6)
    calls = {i: (workers.create_volume, (str(store.root), "raced", barrier)) for i in range(6)}
    ids = set(workers.run_all(calls, ctx, timeout=120).values())
    assert len(ids) == 1
    assert Catalog(store).lookup("raced").id in ids
    # The losers' volumes were removed: only the winner's data is left.
    assert [p.name for p in (store.root / "volumes").iterdir()] == list(ids)
