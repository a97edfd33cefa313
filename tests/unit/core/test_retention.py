"""History retention: the policy, pruning in two steps (horizon now, deletion a grace
later), the stale-writer guard, and what history, restore, reload, gc and fsck make of a
pruned volume. Real filesystem store; ages are set on the store's objects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kvol import fsck
from kvol.cli.main import main
from kvol.errors import HistoryPruned, InvalidArgument, StaleBase
from kvol.repo import Repo
from kvol.retention import (
    RetentionPolicy,
    parse_duration,
    prune_history,
    read_policy,
    write_policy,
)
from kvol.volume import Volume
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import (
    CHUNK,
    HOUR,
    CountingStore,
    backdate,
    log_seqs,
    object_files,
    tree,
    volume_tree,
    write,
)


def versions(repo: Repo, root: Path, n: int) -> WorkingCopy:
    """Commits 1..n: ``big`` rewritten each time (its own blobs), ``same`` written once."""
    wc = WorkingCopy.create(repo, root)
    write(wc.root, "same.txt", "never changes\n")
    for i in range(1, n + 1):
        write(wc.root, "big", bytes([i]) * (3 * CHUNK))
        wc.commit(f"version {i}")
    return wc


def age_everything(store: CountingStore, repo: Repo, seconds: float) -> None:
    """Every object of the volume (content, entries, horizons) looks ``seconds`` old."""
    backdate(
        (p for p in (store.root / "volumes" / repo.volume_id).rglob("*") if p.is_file()), seconds
    )


def assert_clean(repo: Repo) -> None:
    report = fsck.check(repo)
    assert report.ok, [(d.kind, d.key, d.detail) for d in report.damage]


@pytest.fixture
def vol(chunked: Repo) -> Repo:
    return chunked


def test_policy_is_checked_and_round_trips(store: CountingStore, vol: Repo) -> None:
    assert read_policy(store, vol.volume_id).keeps_everything
    with pytest.raises(InvalidArgument):
        RetentionPolicy(keep_last=0)
    with pytest.raises(InvalidArgument):
        RetentionPolicy(keep_for_seconds=float("inf"))
    write_policy(store, vol.volume_id, RetentionPolicy(5, 86400.0))
    assert read_policy(store, vol.volume_id) == RetentionPolicy(5, 86400.0)
    assert parse_duration("30d") == 30 * 86400 and parse_duration("90") == 90
    with pytest.raises(InvalidArgument):
        parse_duration("soon")


def test_without_a_policy_nothing_is_pruned(
    store: CountingStore, vol: Repo, tmp_path: Path
) -> None:
    versions(vol, tmp_path / "w", 4).close(final_commit=False)
    age_everything(store, vol, 2 * HOUR)
    report = prune_history(vol)
    assert (report.horizon, report.entries_deleted) == (0, 0)
    vol.gc()
    assert [volume_tree(vol, s)["big"][0] for s in range(1, 5)] == [1, 2, 3, 4]


def test_keep_last_prunes_in_two_steps_and_gc_then_frees_the_old_versions(
    store: CountingStore, vol: Repo, tmp_path: Path
) -> None:
    versions(vol, tmp_path / "w", 6).close(final_commit=False)
    head_before = volume_tree(vol)
    age_everything(store, vol, 2 * HOUR)
    blobs_before = len(object_files(store, vol.volume_id, "blobs"))

    report = prune_history(vol, RetentionPolicy(keep_last=2))
    # Commits 5 and 6 kept; history now begins at 5 (a checkpoint holds the state there).
    assert (report.horizon, report.advanced) == (5, True)
    assert [c.seq for c in vol.history()] == [6, 5]
    assert volume_tree(vol, 5)["big"][0] == 5
    with pytest.raises(HistoryPruned, match="retained history begins at commit 5"):
        vol.state(4)
    # The old entries stay for a grace, and so does what they name: a writer that saw the
    # old horizon may still publish an entry reusing it.
    assert log_seqs(store, vol.volume_id) == [1, 2, 3, 4, 5, 6]
    assert vol.gc().objects_deleted == 0
    assert_clean(vol)

    # A grace later they go, then gc frees the content only they named.
    age_everything(store, vol, 2 * HOUR)
    report = prune_history(vol, RetentionPolicy(keep_last=2))
    assert (report.horizon, report.entries_deleted, report.entries_waiting) == (5, 4, 0)
    assert log_seqs(store, vol.volume_id) == [5, 6]
    gc = vol.gc()
    assert gc.objects_deleted == 4  # versions 1-4 (three equal chunks: one blob each)
    assert len(object_files(store, vol.volume_id, "blobs")) == blobs_before - 4
    assert volume_tree(vol) == head_before
    assert volume_tree(vol, 5)["same.txt"] == b"never changes\n"
    assert vol.head() == 6
    assert_clean(vol)


def test_keep_for_keeps_commits_newer_than_the_duration_by_the_store_clock(
    store: CountingStore, vol: Repo, tmp_path: Path
) -> None:
    versions(vol, tmp_path / "w", 4).close(final_commit=False)
    log = store.root / "volumes" / vol.volume_id / "log"
    for seq, age in ((1, 5 * HOUR), (2, 4 * HOUR), (3, 0.5 * HOUR), (4, 0.1 * HOUR)):
        backdate(log / f"{seq:012d}", age)
    report = prune_history(vol, RetentionPolicy(keep_for_seconds=HOUR))
    assert report.horizon == 3
    # Either rule keeps a commit: the last 3 reach back to commit 2.
    assert prune_history(vol, RetentionPolicy(keep_last=3, keep_for_seconds=HOUR)).horizon == 3
    # The horizon never moves back.
    assert prune_history(vol, RetentionPolicy(keep_last=4)).horizon == 3


def test_the_head_is_always_kept(store: CountingStore, vol: Repo, tmp_path: Path) -> None:
    versions(vol, tmp_path / "w", 3).close(final_commit=False)
    backdate((store.root / "volumes" / vol.volume_id / "log").iterdir(), 10 * HOUR)
    assert prune_history(vol, RetentionPolicy(keep_for_seconds=HOUR)).horizon == 3
    assert volume_tree(vol)["big"][0] == 3


@pytest.mark.parametrize("settled", [False, True], ids=["entries-waiting", "entries-deleted"])
def test_stale_writer_is_refused_then_reloads_keeping_its_changes_and_commits(
    store: CountingStore, vol: Repo, tmp_path: Path, settled: bool
) -> None:
    stale = WorkingCopy.create(vol, tmp_path / "stale")
    write(stale.root, "mine.txt", "v0\n")
    write(stale.root, "shared.txt", "v0\n")
    stale.commit()  # commit 1: the stale copy's base
    other = WorkingCopy.create(vol, tmp_path / "other")
    for i in range(1, 4):
        write(other.root, "theirs.txt", f"v{i}\n")
        if i == 2:
            (other.root / "shared.txt").unlink()
        other.commit()  # commits 2..4
    other.close(final_commit=False)
    prune_history(vol, RetentionPolicy(keep_last=1))
    if settled:
        age_everything(store, vol, 2 * HOUR)
        prune_history(vol, RetentionPolicy(keep_last=1))
        vol.gc()
        assert log_seqs(store, vol.volume_id) == [4]
    assert vol.horizon() == 4

    write(stale.root, "mine.txt", "local change\n")
    write(stale.root, "new.txt", "local new file\n")
    with pytest.raises(StaleBase, match="Reload it"):
        stale.commit()
    assert vol.head() == 4  # nothing was published

    result = stale.reload()
    assert result.to_seq == 4
    assert tree(stale.root) == {
        "mine.txt": b"local change\n",  # local changes kept
        "new.txt": b"local new file\n",
        "theirs.txt": b"v3\n",  # others' commits applied; shared.txt deleted by them
    }
    assert stale.commit().seq == 5
    assert volume_tree(vol) == {
        "mine.txt": b"local change\n",
        "new.txt": b"local new file\n",
        "theirs.txt": b"v3\n",
    }
    stale.close(final_commit=False)
    assert_clean(vol)


def test_restore_of_a_pruned_commit_says_it_was_pruned(vol: Repo, tmp_path: Path) -> None:
    versions(vol, tmp_path / "w", 3).close(final_commit=False)
    prune_history(vol, RetentionPolicy(keep_last=2))
    with pytest.raises(HistoryPruned, match=r"commit 1 .* was pruned"):
        vol.restore(1)
    assert vol.restore(2) == 4
    assert volume_tree(vol)["big"][0] == 2


def test_cli_retention_history_restore_and_gc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"file://{tmp_path / 'store'}"

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(["--store", url, *args])
        out, err = capsys.readouterr()
        return code, out, err

    assert cli("volume", "create", "data", "--keep-last", "2")[0] == 0
    vol = Volume.from_name("data", store=url)
    assert vol.retention_policy() == RetentionPolicy(keep_last=2)
    wc = WorkingCopy.create(vol.repo, tmp_path / "w")
    for i in range(4):
        write(wc.root, "f", f"{i}\n")
        wc.commit()
    wc.close(final_commit=False)

    code, out, _ = cli("volume", "gc", "data", "--json")
    assert code == 0 and json.loads(out)["retained_from"] == 3
    code, out, _ = cli("volume", "history", "data")
    assert code == 0 and "Retained history begins at commit 3" in out
    code, _, err = cli("volume", "restore", "data", "1", "-y")
    assert code == 3 and "was pruned" in err

    code, out, _ = cli("volume", "retention", "data", "--keep-for", "7d")
    assert code == 0 and "commits of the last 1w" in out
    assert vol.retention_policy() == RetentionPolicy(keep_for_seconds=7 * 86400)
    code, out, _ = cli("volume", "retention", "data", "--json")
    assert json.loads(out) == {
        "keep_last": None,
        "keep_for_seconds": 7 * 86400,
        "retained_from": 3,
    }
    assert cli("volume", "retention", "data", "--keep-all")[0] == 0
    assert vol.retention_policy().keeps_everything
    assert cli("volume", "retention", "data", "--keep-last", "0")[0] == 2


def test_a_writer_racing_prune_and_gc_never_publishes_collected_content(
    store: CountingStore, vol: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytes(range(256)) * (2 * CHUNK // 256)
    a = WorkingCopy.create(vol, tmp_path / "a")
    write(a.root, "x.bin", data)
    a.commit()  # 1: a's base
    b = WorkingCopy.create(vol, tmp_path / "b")
    (b.root / "x.bin").unlink()
    b.commit()  # 2: only pruned commits name x.bin's content from here on
    write(b.root, "z.txt", "z\n")
    b.commit()  # 3
    b.close(final_commit=False)
    # a copies x.bin: its commit reuses the content it knows by name, uploading nothing.
    shutil.copyfile(a.root / "x.bin", a.root / "y.bin")
    age_everything(store, vol, 2 * HOUR)

    real = store._put_if_absent
    raced: list[str] = []

    def prune_and_collect_first(key: str, payload: bytes | memoryview) -> bool:
        # a has checked the horizon (0: its base 1 is retained); before its entry lands,
        # a prune moves the horizon past that base and a collection runs.
        if "/log/" in key and not raced:
            raced.append(key)
            assert prune_history(vol, RetentionPolicy(keep_last=1)).horizon == 3
            backdate(object_files(store, vol.volume_id, "blobs"), 2 * HOUR)
            vol.gc()
        return real(key, payload)

    monkeypatch.setattr(store, "_put_if_absent", prune_and_collect_first)
    assert a.commit().seq == 4
    monkeypatch.undo()
    assert raced
    a.close(final_commit=False)
    assert volume_tree(vol)["y.bin"] == data
    # A grace later the pruned commits go; the content stays, named by commit 4.
    age_everything(store, vol, 2 * HOUR)
    assert prune_history(vol, RetentionPolicy(keep_last=1)).entries_deleted == 2
    vol.gc()
    assert volume_tree(vol)["y.bin"] == data
    assert_clean(vol)
