"""Reload scenarios of the core: materializing a copy, pulling changed files, a no-op reload.

Two working copies of one volume stand for two pods; the git baseline is the same pair
as an origin repository and a clone that pulls from it.
"""

from __future__ import annotations

import shutil

from bench import baselines
from bench.harness import Context, Measurement, Result, Scenario, Target, median_time, timed
from bench.tree import write_small_files
from bench.volumes import fresh_volume
from kvol.workcopy import ReloadResult, WorkingCopy

#: Enough runs that a median of a few-millisecond operation means something.
NOOP_RUNS = 21


def reload(ctx: Context) -> list[Result]:
    s = ctx.sizes
    with fresh_volume(ctx.store_url) as repo:
        writer_root, origin = ctx.workdir / "writer", ctx.workdir / "origin"
        writer = WorkingCopy.create(repo, writer_root)
        baselines.git_init(origin)
        ctx.log(f"writing a volume of {s.reload_volume_files} files, twice")
        write_small_files(writer_root, s.reload_volume_files, s.reload_file_size)
        write_small_files(origin, s.reload_volume_files, s.reload_file_size)
        writer.commit()
        baselines.git_commit_all(origin, "initial")
        baselines.drop_dirty_pages()

        reader_root, clone = ctx.workdir / "reader", ctx.workdir / "clone"
        materialize = timed(lambda: WorkingCopy.create(repo, reader_root).close(False))
        git_clone = baselines.git_clone(origin, clone)
        baselines.drop_dirty_pages()
        cp_all = baselines.cp_tree(origin, ctx.workdir / "cp-all")
        shutil.rmtree(ctx.workdir / "cp-all")
        reader = WorkingCopy.open(reader_root, store=repo.store)

        kvol_runs, pull_runs, cp_runs = [], [], []
        for generation in range(1, s.repeats + 1):
            changed = write_small_files(
                writer_root, s.reload_changed, s.reload_file_size, generation=generation
            )
            write_small_files(origin, s.reload_changed, s.reload_file_size, generation=generation)
            writer.commit()
            baselines.git_commit_all(origin, f"change-{generation}")
            baselines.drop_dirty_pages()
            kvol_runs.append(timed(lambda: _expect(reader.reload(), s.reload_changed)))
            pull_runs.append(baselines.git(clone, "pull", "-q", "--ff-only"))
            dst = ctx.workdir / f"cp-{generation}"
            cp_runs.append(baselines.cp_files(writer_root, changed, dst))
            shutil.rmtree(dst)
            baselines.drop_dirty_pages()

        noop = median_time(lambda: _expect(reader.reload(), 0), NOOP_RUNS)
        noop_pull = median_time(lambda: baselines.git(clone, "pull", "-q", "--ff-only"), 5)
        writer.close(final_commit=False)
        reader.close(final_commit=False)

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    changed_params = {
        "volume_files": s.reload_volume_files,
        "changed_files": s.reload_changed,
        "file_size": s.reload_file_size,
        "runs": s.repeats,
    }
    return [
        Result(
            "core.materialize",
            materialize,
            Measurement("git clone", git_clone),
            params={"files": s.reload_volume_files, "file_size": s.reload_file_size},
            other_baselines=[Measurement("cp -r", cp_all)],
        ),
        Result(
            "core.reload_changed",
            median(kvol_runs),
            Measurement("git pull --ff-only", median(pull_runs)),
            params=changed_params,
            other_baselines=[Measurement("cp --parents (changed files only)", median(cp_runs))],
            details={"kvol_runs_seconds": kvol_runs},
        ),
        Result(
            "core.reload_noop",
            noop,
            Measurement("git pull --ff-only (up to date)", noop_pull),
            Target("seconds_at_most", 0.010, "kvol under 10 ms"),
            params={"volume_files": s.reload_volume_files, "runs": NOOP_RUNS},
        ),
    ]


def _expect(result: ReloadResult, files: int) -> None:
    if result.files != files:
        raise AssertionError(f"reload wrote {result.files} files, expected {files}")


SCENARIOS = [
    Scenario("core.reload", reload, description="materialize, reload of changed files, no-op"),
]
