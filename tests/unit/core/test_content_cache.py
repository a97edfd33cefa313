"""The node's content cache under a size limit: least recently used entries go first,
never one a snapshot links or a build holds, and its size and hit ratio are exported."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prometheus_client import REGISTRY

from kvol.model import FileRecord
from kvol.overlay import ContentCache, Lowers
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy

SIZE = 10 << 10


def commit_files(repo: Repo, tmp_path: Path, names: str) -> dict[str, FileRecord]:
    """One file of SIZE distinct bytes per letter of ``names``; returns the head's records."""
    where = tmp_path / f"wc-{names}"
    wc = WorkingCopy.create(repo, where / "root", where / "meta")
    for name in names:
        (wc.root / name).write_bytes(os.urandom(SIZE))
    wc.commit()
    wc.close(final_commit=False)
    return dict(repo.state().files)


def sample(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    return 0.0 if value is None else value


def test_the_least_recently_used_entries_are_evicted_first(repo: Repo, tmp_path: Path) -> None:
    files = commit_files(repo, tmp_path, "abcd")
    cache = ContentCache(tmp_path / "cache", max_bytes=0)
    for name in "abcd":  # one at a time: a known order
        cache.fill(repo, [files[name]])
    cache.fill(repo, [files["a"]])  # used again: now the most recent
    assert cache.size == 4 * SIZE
    evictions = sample("kvol_node_cache_evictions_total")
    cache.max_bytes = 2 * SIZE
    assert cache.trim() == 0
    assert {n for n in "abcd" if cache.has(files[n])} == {"a", "d"}
    assert cache.size == 2 * SIZE
    assert sample("kvol_node_cache_bytes") == 2 * SIZE
    assert sample("kvol_node_cache_evictions_total") == evictions + 2


def test_an_entry_a_snapshot_links_is_never_evicted(repo: Repo, tmp_path: Path) -> None:
    files = commit_files(repo, tmp_path, "ab")
    cache = ContentCache(tmp_path / "cache", max_bytes=1)
    lowers = Lowers(tmp_path / "lowers", cache)
    lower = lowers.build(repo, repo.head())
    later = commit_files(repo, tmp_path, "c")
    cache.fill(repo, [later["c"]])
    # Over the limit: only the entry no snapshot links can go.
    assert cache.trim() == 2 * SIZE - 1
    assert cache.has(files["a"]) and cache.has(files["b"]) and not cache.has(later["c"])
    assert (lower.tree / "a").read_bytes() == cache.path(files["a"]).read_bytes()
    lowers.drop(lower)
    assert cache.trim() == 0
    assert cache.size == 0 and not cache.has(files["a"])


def test_an_entry_a_build_holds_is_never_evicted(repo: Repo, tmp_path: Path) -> None:
    files = commit_files(repo, tmp_path, "a")
    cache = ContentCache(tmp_path / "cache", max_bytes=1)
    with cache.holding() as held:
        cache.fill(repo, [files["a"]], hold=held)
        assert cache.trim() == SIZE - 1
        assert cache.has(files["a"])
    assert cache.trim() == 0
    assert not cache.has(files["a"])


def test_a_new_process_finds_the_entries_and_their_recency(repo: Repo, tmp_path: Path) -> None:
    files = commit_files(repo, tmp_path, "abc")
    cache = ContentCache(tmp_path / "cache")
    for name in "abc":
        cache.fill(repo, [files[name]])
    # Read by a pod since (the atime; the mtime is the entry's identity and stays).
    record = files["a"]
    future = time.time_ns() + 3600 * 10**9
    os.utime(cache.path(record), ns=(future, record.mtime_ns))
    restarted = ContentCache(tmp_path / "cache", max_bytes=SIZE)
    assert restarted.size == 3 * SIZE
    assert restarted.trim() == 0
    assert [n for n in "abc" if restarted.has(files[n])] == ["a"]


def test_hits_and_misses_are_counted(repo: Repo, tmp_path: Path) -> None:
    files = list(commit_files(repo, tmp_path, "abc").values())
    cache = ContentCache(tmp_path / "cache")
    hits, misses = sample("kvol_node_cache_hits_total"), sample("kvol_node_cache_misses_total")
    assert cache.fill(repo, files) == 3
    assert sample("kvol_node_cache_misses_total") == misses + 3
    assert sample("kvol_node_cache_hits_total") == hits
    assert cache.fill(repo, files) == 0
    assert sample("kvol_node_cache_hits_total") == hits + 3
    assert sample("kvol_node_cache_bytes") == 3 * SIZE
