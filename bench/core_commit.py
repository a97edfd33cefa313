"""Commit scenarios of the core: large new files, many small new files, a no-op commit."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

from bench import baselines
from bench.harness import Context, Measurement, Result, Scenario, Target, median_time, timed
from bench.tree import write_large_files, write_small_files
from bench.volumes import fresh_volume, is_durable
from kvol import fsops
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy

#: Files written within this long before a scan are hashed again by the next one (kvol's
#: index and git's index both do this); timings of no-op commits start after it.
RACY_WAIT_SECONDS = 2.2


def commit_large(ctx: Context) -> list[Result]:
    s = ctx.sizes
    with fresh_volume(ctx.store_url) as repo:
        root = ctx.workdir / "wc"
        wc = WorkingCopy.create(repo, root)
        ctx.log(f"writing {s.large_bytes >> 20} MiB in {s.large_files} files")
        write_large_files(root / "data", s.large_bytes, s.large_files)
        baselines.drop_dirty_pages()
        kvol = timed(lambda: _expect(wc.commit(), s.large_files))
        wc.close(final_commit=False)
        durable = is_durable(repo.store)

        baselines.drop_dirty_pages()
        cp = baselines.cp_tree(root / "data", ctx.workdir / "cp")
        shutil.rmtree(ctx.workdir / "cp")
        baselines.drop_dirty_pages()
        cp_sync = baselines.cp_tree(root / "data", ctx.workdir / "cp-sync", sync=True)

    # A durable store pays for writing back to disk; so does "cp && sync", and only it.
    plain, synced = Measurement("cp -r", cp), Measurement("cp -r && sync", cp_sync)
    primary, other = (synced, plain) if durable else (plain, synced)
    mib = s.large_bytes / (1 << 20)
    return [
        Result(
            "core.commit_large",
            kvol,
            primary,
            Target("speedup_at_least", 0.7, f"kvol at least 0.7x the throughput of {primary.name}"),
            params={"bytes": s.large_bytes, "files": s.large_files, "durable_store": durable},
            other_baselines=[other],
            details={
                "kvol_mib_per_second": mib / kvol,
                "cp_mib_per_second": mib / cp,
                "cp_sync_mib_per_second": mib / cp_sync,
            },
        )
    ]


def _twin_trees(ctx: Context, repo: Repo, files: int, file_size: int) -> tuple[WorkingCopy, Path]:
    """A new working copy and a new git repository holding the same small files."""
    root = ctx.workdir / "wc"
    wc = WorkingCopy.create(repo, root)
    git_tree = ctx.workdir / "git"
    baselines.git_init(git_tree)
    ctx.log(f"writing {files} files of {file_size} bytes, twice")
    write_small_files(root, files, file_size)
    write_small_files(git_tree, files, file_size)
    return wc, git_tree


def commit_small(ctx: Context) -> list[Result]:
    s = ctx.sizes
    with fresh_volume(ctx.store_url) as repo:
        wc, git_tree = _twin_trees(ctx, repo, s.small_files, s.small_file_size)
        baselines.drop_dirty_pages()
        git = baselines.git_commit_all(git_tree)
        baselines.drop_dirty_pages()
        kvol = timed(lambda: _expect(wc.commit(), s.small_files))
        wc.close(final_commit=False)
    return [
        Result(
            "core.commit_small_files",
            kvol,
            Measurement("git add -A && git commit", git),
            Target("speedup_at_least", 3.0, "kvol at least 3x faster than git"),
            params={"files": s.small_files, "file_size": s.small_file_size},
            details={"kvol_files_per_second": s.small_files / kvol},
        )
    ]


def commit_noop(ctx: Context) -> list[Result]:
    s = ctx.sizes
    with fresh_volume(ctx.store_url) as repo:
        wc, git_tree = _twin_trees(ctx, repo, s.noop_files, s.noop_file_size)
        root = wc.root
        written = time.monotonic()
        kvol_first = timed(lambda: _expect(wc.commit(), s.noop_files))
        git_first = baselines.git_commit_all(git_tree)
        # Past the racy window, a first no-op pass settles both indexes.
        time.sleep(max(0.0, RACY_WAIT_SECONDS - (time.monotonic() - written)))
        wc.commit()
        baselines.git(git_tree, "status", "--porcelain")
        baselines.drop_dirty_pages()

        kvol = median_time(lambda: _expect(wc.commit(), None), s.repeats)
        git_status = median_time(lambda: baselines.git(git_tree, "status"), s.repeats)
        wc.close(final_commit=False)
        kvol_cold = median_time(
            lambda: WorkingCopy.open(root, store=repo.store).commit(), s.repeats
        )
        kvol_status = median_time(lambda: WorkingCopy.open(root, store=repo.store).status(), 1)

    baseline = Measurement("git status", git_status)
    params = {"files": s.noop_files, "file_size": s.noop_file_size}
    target = Target("speedup_at_least", 1.0, "kvol no slower than git status")
    return [
        Result(
            "core.commit_noop",
            kvol,
            baseline,
            target,
            params=params | {"working_copy": "open (as autocommit runs it)"},
            details={
                "first_commit_seconds": kvol_first,
                "git_first_add_commit_seconds": git_first,
            },
        ),
        Result(
            "core.commit_noop_cold",
            kvol_cold,
            baseline,
            target,
            params=params | {"working_copy": "opened from disk for each commit"},
            details={"status_cold_seconds": kvol_status},
        ),
    ]


#: What another program on the node leaves unsynced before each measured commit.
NEIGHBOUR_BYTES = 2 << 30


def commit_beside_writer(ctx: Context) -> list[Result]:
    """A one-file commit right after another program wrote ``NEIGHBOUR_BYTES`` to the same
    filesystem without syncing them (a pod saving a checkpoint beside another pod), vs the
    same commit on a quiet filesystem. Twice: with a store that does not sync (as S3),
    where only the copy's own sync is measured, and with a filesystem store on that same
    filesystem, which syncs the commit's content too. Also timed: one ``syncfs`` after the
    same write, which a commit that synced the whole filesystem would wait for."""
    store = ctx.workdir / "store"
    return [
        _commit_beside_writer(ctx, "node.commit_beside_writer", f"file://{store}?fsync=false"),
        _commit_beside_writer(ctx, "fs_store.commit_beside_writer", f"file://{store}"),
    ]


def _commit_beside_writer(ctx: Context, name: str, store_url: str) -> Result:
    neighbour_bytes = NEIGHBOUR_BYTES >> 3 if ctx.quick else NEIGHBOUR_BYTES
    rounds = 2 if ctx.quick else 5
    block = os.urandom(1 << 20)
    neighbour = ctx.workdir / "neighbour"
    neighbour.mkdir()

    def write_beside(n: int) -> None:
        # A new file each time: one truncated in place is flushed by ext4 as it closes.
        with (neighbour / f"checkpoint-{n}").open("wb") as f:
            for _ in range(neighbour_bytes >> 20):
                f.write(block)

    quiet, beside, syncfs = [], [], []
    with fresh_volume(store_url) as repo:
        wc = WorkingCopy.create(repo, ctx.workdir / "wc")
        for n in range(rounds):
            ctx.log(
                f"{name} round {n + 1}: a quiet commit, then one beside {neighbour_bytes >> 20} MiB"
            )
            os.sync()
            (wc.root / "file").write_bytes(os.urandom(4096))
            quiet.append(timed(lambda: _expect(wc.commit(), 1)))
            write_beside(2 * n)
            (wc.root / "file").write_bytes(os.urandom(4096))
            beside.append(timed(lambda: _expect(wc.commit(), 1)))
            os.sync()
            write_beside(2 * n + 1)
            syncfs.append(timed(lambda: fsops.sync_filesystem(neighbour)))
            shutil.rmtree(neighbour)
            neighbour.mkdir()
        wc.close(final_commit=False)
    shutil.rmtree(ctx.workdir / "wc")
    neighbour.rmdir()
    return Result(
        name,
        statistics.median(beside),
        Measurement("the same commit on a quiet filesystem", statistics.median(quiet)),
        Target("speedup_at_least", 1 / 3, "within 3x of a quiet filesystem's commit"),
        params={
            "neighbour_bytes": neighbour_bytes,
            "rounds": rounds,
            "file_size": 4096,
            "store": store_url,
        },
        other_baselines=[
            Measurement("syncfs of the filesystem after the same write", statistics.median(syncfs))
        ],
        details={"beside_seconds": beside, "quiet_seconds": quiet, "syncfs_seconds": syncfs},
    )


def _expect(result: object, files: int | None) -> None:
    """Fail the scenario if a commit did not do what it was timed for."""
    got = getattr(result, "files", None)
    seq = getattr(result, "seq", None)
    if files is None:
        if seq is not None:
            raise AssertionError(f"a no-op commit published seq {seq}")
    elif got != files:
        raise AssertionError(f"commit published {got} files, expected {files}")


SCENARIOS = [
    Scenario("core.commit_large", commit_large, description="commit of new large files vs cp"),
    Scenario("core.commit_small_files", commit_small, description="many new small files vs git"),
    Scenario("core.commit_noop", commit_noop, description="no-op commit vs git status"),
    Scenario(
        "node.commit_beside_writer",
        commit_beside_writer,
        per_store=False,
        description="one-file commit beside 2 GiB another program left unsynced vs quiet "
        "(a store that does not sync, and a filesystem store on the same filesystem)",
    ),
]
