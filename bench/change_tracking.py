"""Cost that grows with the change, not the volume: small changes in a large plain copy.

One working copy of ``noop_files`` files (100,000 at full size), held open as a long-running
holder (the node plugin, autocommit) holds it, beside a git repository of the same files:

- ``change.commit_noop_tracked``: a no-op commit with change tracking on, vs ``git status``
  (and the same commit scanning every file, as a copy without tracking does).
- ``change.commit_one``: a commit of one changed file, vs ``git commit -a``.
- ``change.reload_one``: a second copy's reload of that one file, vs ``git pull``.
- ``change.reload_one_new_process``: the same reload by ``kvol volume reload`` (a new
  process, which loads the copy's index from its file: as the CLI or a restarted plugin),
  vs ``git pull``.
- ``change.commit_one_new_process``: a commit of one changed file by ``kvol volume
  commit`` (a new process: it scans every file, as a copy nobody holds open is), vs
  ``git commit -a``.
- ``change.reload_one_watched``: that reload while ``kvol volume watch`` holds the
  reader's copy, vs ``git pull``.
- ``change.commit_one_watched``: the same command while ``kvol volume watch`` holds the
  copy (the command asks the watcher, which tracks changes), vs ``git commit -a``.
- ``change.idle_cpu``: the CPU an idle copy with autocommit burns per hour, vs running
  ``git status`` at the same interval. Measured over a few autocommit intervals and
  extrapolated to an hour (see :func:`_idle_cpu_per_hour`).
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import baselines
from bench.cli_startup import compiled_env, kvol_command
from bench.harness import Context, Measurement, Result, Scenario, Target, timed
from bench.tree import rel_path, write_small_files
from bench.volumes import fresh_volume
from kvol.tracker import DEFAULT_FULL_SCAN_SECONDS
from kvol.workcopy import WorkingCopy

#: Files written within this long before a scan are hashed again by the next one.
RACY_WAIT_SECONDS = 2.2
#: The node plugin's default autocommit interval.
AUTOCOMMIT_SECONDS = 5.0


def change_tracking(ctx: Context) -> list[Result]:
    s = ctx.sizes
    files = s.noop_files
    runs = max(3, s.repeats)
    interval = 0.5 if ctx.quick else AUTOCOMMIT_SECONDS
    ticks = 3 if ctx.quick else 6
    with fresh_volume(ctx.store_url) as repo:
        root, git_tree = ctx.workdir / "wc", ctx.workdir / "git"
        wc = WorkingCopy.create(repo, root)
        baselines.git_init(git_tree)
        ctx.log(f"writing {files} files of {s.noop_file_size} bytes, twice")
        write_small_files(root, files, s.noop_file_size)
        write_small_files(git_tree, files, s.noop_file_size)
        written = time.monotonic()
        wc.commit()
        baselines.git_commit_all(git_tree)
        clone = ctx.workdir / "clone"
        baselines.git_clone(git_tree, clone)
        reader = WorkingCopy.create(repo, ctx.workdir / "reader")
        time.sleep(max(0.0, RACY_WAIT_SECONDS - (time.monotonic() - written)))
        # One settling pass of each (past the racy window), as a running copy has had.
        wc.commit()
        baselines.git(git_tree, "status", "--porcelain")
        baselines.git(clone, "status", "--porcelain")

        # No-op commits: scanning every file, then tracked.
        untracked = _median(lambda: _expect_noop(wc.commit()), runs)
        git_status = _median(lambda: baselines.git(git_tree, "status"), runs)
        if not wc.track_changes():
            raise RuntimeError("change tracking is not available here")
        wc.commit()  # the tracker's first scan is a full one (its watches were just set)
        tracked = _median(lambda: _expect_noop(wc.commit()), runs)

        # One changed file: committed by the tracked copy, reloaded by the other.
        commit_runs, commit_untracked, git_commit_runs, reload_runs, pull_runs = [], [], [], [], []
        for n in range(runs * 2):
            rel = rel_path(n * 997 % files)
            _rewrite(root / rel, n)
            _rewrite(git_tree / rel, n)
            baselines.drop_dirty_pages()
            if n % 2:
                wc.stop_tracking()
                commit_untracked.append(timed(lambda: _expect_files(wc.commit(), 1)))
                wc.track_changes()
                wc.commit()
            else:
                commit_runs.append(timed(lambda: _expect_files(wc.commit(), 1)))
            git_commit_runs.append(
                baselines.run(
                    [
                        baselines.require("git"),
                        *baselines.GIT_OPTIONS,
                        "-C",
                        str(git_tree),
                        "commit",
                        "-a",
                        "-q",
                        "-m",
                        f"change {n}",
                    ]
                )
            )
            baselines.drop_dirty_pages()
            reload_runs.append(timed(lambda: _expect_reloaded(reader.reload(), 1)))
            pull_runs.append(baselines.git(clone, "pull", "-q", "--ff-only"))
        reader.close(final_commit=False)

        # The same, each reload a new process: `kvol volume reload` of the reader's copy.
        reload_cli = [
            *kvol_command(),
            "--store",
            str(ctx.store_url),
            "volume",
            "reload",
            str(reader.root),
        ]
        env = compiled_env(ctx.workdir)
        baselines.run(reload_cli, env=env)  # writes the bytecode, untimed

        def reload_rounds(seed: int, tag: int) -> tuple[list[float], list[float]]:
            """``runs`` times: a file changed and committed on both sides, then timed
            `kvol volume reload` of the reader's copy, and `git pull` of the clone."""
            kvol_runs, git_runs = [], []
            for n in range(runs):
                rel = rel_path((n * 997 + seed) % files)
                _rewrite(root / rel, tag + n)
                _rewrite(git_tree / rel, tag + n)
                _expect_files(wc.commit(), 1)
                baselines.git(git_tree, "commit", "-a", "-q", "-m", f"change {tag + n}")
                baselines.drop_dirty_pages()
                kvol_runs.append(baselines.run(reload_cli, env=env))
                git_runs.append(baselines.git(clone, "pull", "-q", "--ff-only"))
            return kvol_runs, git_runs

        cli_runs, cli_pull_runs = reload_rounds(499, 1000)
        # The same, while `kvol volume watch` holds the reader's copy.
        watch_reader = [*kvol_command(), "--store", str(ctx.store_url), "volume", "watch"]
        watch_reader += [str(reader.root), "--interval", "3600"]
        with _watching(watch_reader, env):
            watched_reload_runs, watched_pull_runs = reload_rounds(617, 4000)

        # One changed file committed by `kvol volume commit`: a new process, which scans
        # every file (no tracker outlives it), vs `git commit -a` of the same file.
        commit_cli = [*kvol_command(), "--store", str(ctx.store_url), "volume", "commit"]
        commit_cli.append(str(root))
        baselines.run(commit_cli, env=env)  # writes the bytecode, untimed

        def commit_rounds(seed: int, tag: int) -> tuple[list[float], list[float]]:
            """``runs`` times: a file changed on both sides, then timed `kvol volume
            commit` of the copy and `git commit -a` of the repository."""
            kvol_runs, git_runs = [], []
            for n in range(runs):
                rel = rel_path((n * 997 + seed) % files)
                _rewrite(root / rel, tag + n)
                _rewrite(git_tree / rel, tag + n)
                baselines.drop_dirty_pages()
                kvol_runs.append(baselines.run(commit_cli, env=env))
                git_runs.append(
                    baselines.git(git_tree, "commit", "-a", "-q", "-m", f"change {tag + n}")
                )
            return kvol_runs, git_runs

        cli_commit_runs, cli_git_commit_runs = commit_rounds(251, 2000)
        # The same, while `kvol volume watch` holds the copy: the command asks the
        # watcher, which looks only at what its events named.
        watch_cli = [*kvol_command(), "--store", str(ctx.store_url), "volume", "watch"]
        watch_cli += [str(root), "--interval", "3600"]
        with _watching(watch_cli, env):
            baselines.run(commit_cli, env=env)  # the watcher's first look is a full one
            watched_runs, watched_git_runs = commit_rounds(733, 3000)

        # Idle, with autocommit: tracked, then scanning every file, then git status.
        time.sleep(RACY_WAIT_SECONDS)
        wc.commit()
        idle_tracked = _idle_cpu_per_hour(wc, interval, ticks)
        wc.stop_tracking()
        idle_untracked = _idle_cpu_per_hour(wc, interval, ticks, tracked=False)
        idle_git = _git_cpu_per_hour(git_tree, interval, ticks)
        wc.close(final_commit=False)

    load = os.getloadavg()
    params = {"files": files, "file_size": s.noop_file_size, "runs": runs}
    details_common = {"loadavg_at_end": [round(x, 2) for x in load]}
    periodic = DEFAULT_FULL_SCAN_SECONDS
    return [
        Result(
            "change.commit_noop_tracked",
            tracked,
            Measurement("git status", git_status),
            Target("speedup_at_least", 1.0, "kvol no slower than git status"),
            params=params,
            other_baselines=[Measurement("kvol no-op commit scanning every file", untracked)],
            details=details_common,
        ),
        Result(
            "change.commit_one",
            statistics.median(commit_runs),
            Measurement("git commit -a", statistics.median(git_commit_runs)),
            Target("speedup_at_least", 1.0, "kvol no slower than git commit -a"),
            params=params,
            other_baselines=[
                Measurement(
                    "kvol commit of one file scanning every file",
                    statistics.median(commit_untracked),
                )
            ],
            details=details_common | {"kvol_runs_seconds": commit_runs},
        ),
        Result(
            "change.reload_one",
            statistics.median(reload_runs),
            Measurement("git pull --ff-only", statistics.median(pull_runs)),
            Target("speedup_at_least", 1.0, "kvol no slower than git pull"),
            params=params,
            details=details_common | {"kvol_runs_seconds": reload_runs},
        ),
        *(
            Result(
                name,
                statistics.median(kvol_runs),
                Measurement(git_command, statistics.median(git_runs)),
                Target("speedup_at_least", 1.0, f"kvol no slower than {git_command}"),
                params=params | {"command": command},
                details=details_common
                | {"kvol_runs_seconds": kvol_runs, "git_runs_seconds": git_runs},
            )
            for name, command, kvol_runs, git_command, git_runs in (
                (
                    "change.reload_one_new_process",
                    "kvol volume reload",
                    cli_runs,
                    "git pull --ff-only",
                    cli_pull_runs,
                ),
                (
                    "change.reload_one_watched",
                    "kvol volume reload (kvol volume watch holds the copy)",
                    watched_reload_runs,
                    "git pull --ff-only",
                    watched_pull_runs,
                ),
                (
                    "change.commit_one_new_process",
                    "kvol volume commit",
                    cli_commit_runs,
                    "git commit -a",
                    cli_git_commit_runs,
                ),
                (
                    "change.commit_one_watched",
                    "kvol volume commit (kvol volume watch holds the copy)",
                    watched_runs,
                    "git commit -a",
                    watched_git_runs,
                ),
            )
        ),
        Result(
            # Not seconds of wall time: CPU seconds per hour of an idle copy.
            "change.idle_cpu",
            idle_tracked["cpu_seconds_per_hour"],
            Measurement(
                f"git status every {interval:g} s (CPU s/hour)",
                idle_git["cpu_seconds_per_hour"],
            ),
            Target("speedup_at_least", 1.0, "an idle copy burns no more CPU than git status"),
            params=params | {"autocommit_seconds": interval, "ticks": ticks},
            other_baselines=[
                Measurement(
                    "autocommit scanning every file (CPU s/hour)",
                    idle_untracked["cpu_seconds_per_hour"],
                )
            ],
            details=details_common
            | {
                "tracked": idle_tracked,
                "untracked": idle_untracked,
                "git": idle_git,
                "periodic_full_scan_seconds": periodic,
                "how": (
                    "process CPU time (all threads) over the ticks, per tick, times ticks per "
                    "hour; with tracking, plus one full scan's CPU per periodic full scan"
                ),
            },
        ),
    ]


@contextlib.contextmanager
def _watching(command: list[str], env: dict[str, str]) -> Iterator[None]:
    """A `kvol volume watch` process, from the moment it answers until it is stopped."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("Watching"):
                break
        else:
            raise RuntimeError(f"kvol volume watch ended before watching (exit {proc.wait()})")
        yield
    finally:
        proc.terminate()
        if proc.wait(timeout=600) != 0:
            raise RuntimeError(f"kvol volume watch exited with {proc.returncode}")


def _idle_cpu_per_hour(
    wc: WorkingCopy, interval: float, ticks: int, *, tracked: bool = True
) -> dict[str, float]:
    """CPU of the idle copy's autocommit over ``ticks`` intervals, per hour. With tracking,
    the safety net's periodic full scans come on top: one full scan's CPU each."""
    if tracked:
        if not wc.track_changes():
            raise RuntimeError("change tracking is not available here")
        wc.commit()
    before, started = time.process_time(), time.monotonic()
    wc.start_autocommit(interval, track_changes=tracked)
    time.sleep(interval * ticks + interval / 2)
    wc.stop_autocommit()
    cpu, elapsed = time.process_time() - before, time.monotonic() - started
    per_tick = cpu / ticks
    per_hour = per_tick * 3600 / interval
    out = {"cpu_seconds": cpu, "elapsed_seconds": elapsed, "cpu_per_tick_seconds": per_tick}
    if tracked:
        # The safety net's full scan (watches set up again, then every file), timed alone.
        wc.track_changes()
        assert wc._tracker is not None
        wc._tracker.request_full_scan("bench")
        full = _cpu(wc.commit)
        out["periodic_full_scan_cpu_seconds"] = full
        per_hour += full * 3600 / DEFAULT_FULL_SCAN_SECONDS
        wc.stop_tracking()
    out["cpu_seconds_per_hour"] = per_hour
    return out


def _git_cpu_per_hour(tree: Path, interval: float, ticks: int) -> dict[str, float]:
    """``git status`` run ``ticks`` times: its CPU (user + system of the child) per hour."""
    before = _children_cpu()
    for _ in range(ticks):
        baselines.git(tree, "status", "--porcelain")
    per_tick = (_children_cpu() - before) / ticks
    return {"cpu_per_tick_seconds": per_tick, "cpu_seconds_per_hour": per_tick * 3600 / interval}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu(fn: Callable[[], object]) -> float:
    before = time.process_time()
    fn()
    return time.process_time() - before


def _median(fn: Callable[[], object], runs: int) -> float:
    return statistics.median(timed(fn) for _ in range(runs))


def _rewrite(path: Path, n: int) -> None:
    path.write_bytes(b"changed %d\n" % n)


def _expect_noop(result: object) -> None:
    seq = getattr(result, "seq", None)
    if seq is not None:
        raise AssertionError(f"a no-op commit published seq {seq}")


def _expect_files(result: object, files: int) -> None:
    got = getattr(result, "files", None)
    if got != files:
        raise AssertionError(f"commit published {got} files, expected {files}")


def _expect_reloaded(result: object, files: int) -> None:
    got = getattr(result, "files", None)
    if got != files:
        raise AssertionError(f"reload wrote {got} files, expected {files}")


SCENARIOS = [
    Scenario(
        "change.tracking",
        change_tracking,
        description="small changes in a large plain copy vs git; idle CPU per hour",
    ),
]
