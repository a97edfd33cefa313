"""kvol on S3 beside rclone on the same MinIO: upload, materialize, many small files.

Each kvol timing has the matching rclone timing of the same tree from the same run;
runs alternate which tool goes first, and the median is reported.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bench import baselines
from bench.harness import Context, Measurement, Result, Scenario, Target, timed
from bench.s3_minio import REMOTE, kvol_env, rclone, rclone_version, server
from bench.tree import write_large_files, write_small_files
from kvol.repo import Repo
from kvol.store import open_store
from kvol.workcopy import WorkingCopy

#: Runs of each large transfer (kvol and rclone each); the median counts.
LARGE_RUNS = 3


def _store_url(bucket: str) -> str:
    kvol_env()
    return server().url(bucket, "kvol")


def _raw_store_rates(url: str, total: int, threads: int = 8) -> dict[str, float]:
    """The store alone: 8 MiB objects put and got by ``threads`` threads (MiB/s)."""
    store = open_store(url)
    block = 8 << 20
    data = os.urandom(block)
    count = max(1, total // block)
    with ThreadPoolExecutor(threads) as pool:
        put = timed(lambda: list(pool.map(lambda i: store.put(f"raw/{i}", data), range(count))))
        get = timed(lambda: list(pool.map(lambda i: store.get(f"raw/{i}"), range(count))))
    for i in range(count):
        store.delete(f"raw/{i}")
    mib = count * block / (1 << 20)
    return {"store_put_mib_per_second": mib / put, "store_get_mib_per_second": mib / get}


def large(ctx: Context) -> list[Result]:
    s = ctx.sizes
    bucket = server().create_bucket()
    url = _store_url(bucket)
    src = ctx.workdir / "src"
    ctx.log(f"writing {s.large_bytes >> 20} MiB in {s.large_files} files")
    write_large_files(src, s.large_bytes, s.large_files)
    samples: dict[str, list[float]] = {
        k: [] for k in ("kvol_up", "rclone_up", "kvol_down", "rclone_down")
    }
    store = open_store(url)
    for run in range(LARGE_RUNS):
        repo = Repo.create(store)
        wc_root = ctx.workdir / f"wc{run}"
        wc = WorkingCopy.create(repo, wc_root)
        shutil.copytree(src, wc_root / "data")
        baselines.drop_dirty_pages()
        remote = f"{REMOTE}:{bucket}/rclone{run}"

        def kvol_up(wc: WorkingCopy = wc) -> None:
            samples["kvol_up"].append(timed(wc.commit))

        def rclone_up(remote: str = remote) -> None:
            samples["rclone_up"].append(rclone("copy", str(src), remote))

        def kvol_down(repo: Repo = repo, run: int = run) -> None:
            target = ctx.workdir / f"materialized{run}"
            samples["kvol_down"].append(
                timed(lambda: WorkingCopy.create(repo, target).close(final_commit=False))
            )
            shutil.rmtree(target)
            baselines.drop_dirty_pages()

        def rclone_down(remote: str = remote, run: int = run) -> None:
            target = ctx.workdir / f"downloaded{run}"
            samples["rclone_down"].append(rclone("copy", remote, str(target)))
            shutil.rmtree(target)
            baselines.drop_dirty_pages()

        # Alternate who goes first, so neither always meets a warmer server.
        ups: list[Callable[[], None]] = [kvol_up, rclone_up]
        downs: list[Callable[[], None]] = [kvol_down, rclone_down]
        if run % 2:
            ups.reverse()
            downs.reverse()
        for step in (*ups, *downs):
            step()
        wc.close(final_commit=False)
        shutil.rmtree(wc_root)
        repo.destroy()
        rclone("purge", remote)

    raw = _raw_store_rates(url, min(s.large_bytes, 512 << 20))
    med = {k: statistics.median(v) for k, v in samples.items()}
    mib = s.large_bytes / (1 << 20)
    params = {"bytes": s.large_bytes, "files": s.large_files, "runs": LARGE_RUNS}
    common = {"rclone": rclone_version(), "samples_seconds": samples} | raw
    return [
        Result(
            "s3.upload",
            med["kvol_up"],
            Measurement("rclone copy DIR remote:", med["rclone_up"]),
            Target("speedup_at_least", 0.9, "kvol commit at least 0.9x rclone's upload rate"),
            store=url,
            params=params,
            details={
                "kvol_mib_per_second": mib / med["kvol_up"],
                "rclone_mib_per_second": mib / med["rclone_up"],
            }
            | common,
        ),
        Result(
            "s3.materialize",
            med["kvol_down"],
            Measurement("rclone copy remote: DIR", med["rclone_down"]),
            Target("speedup_at_least", 0.9, "kvol materialize at least 0.9x rclone's download"),
            store=url,
            params=params,
            details={
                "kvol_mib_per_second": mib / med["kvol_down"],
                "rclone_mib_per_second": mib / med["rclone_down"],
            }
            | common,
        ),
    ]


def small(ctx: Context) -> list[Result]:
    s = ctx.sizes
    bucket = server().create_bucket()
    url = _store_url(bucket)
    store = open_store(url)
    repo = Repo.create(store)
    wc_root = ctx.workdir / "wc"
    wc = WorkingCopy.create(repo, wc_root)
    ctx.log(f"writing {s.small_files} files of {s.small_file_size} bytes")
    write_small_files(wc_root, s.small_files, s.small_file_size)
    baselines.drop_dirty_pages()
    kvol_commit = timed(wc.commit)
    wc.close(final_commit=False)
    remote = f"{REMOTE}:{bucket}/rclone"
    rclone_up = rclone("copy", "--exclude", ".kvol/**", str(wc_root), remote)
    baselines.drop_dirty_pages()
    kvol_down = timed(
        lambda: WorkingCopy.create(repo, ctx.workdir / "materialized").close(final_commit=False)
    )
    baselines.drop_dirty_pages()
    rclone_down = rclone("copy", remote, str(ctx.workdir / "downloaded"))
    params = {"files": s.small_files, "file_size": s.small_file_size}
    started = time.perf_counter()
    repo.destroy()
    details = {"kvol_destroy_seconds": time.perf_counter() - started, "rclone": rclone_version()}
    return [
        Result(
            "s3.commit_small_files",
            kvol_commit,
            Measurement("rclone copy DIR remote:", rclone_up),
            Target("seconds_at_most", 2.0, "commit of 10,000 files of 4 KiB to S3 within 2 s"),
            store=url,
            params=params,
            details=details | {"kvol_files_per_second": s.small_files / kvol_commit},
        ),
        Result(
            "s3.materialize_small_files",
            kvol_down,
            Measurement("rclone copy remote: DIR", rclone_down),
            store=url,
            params=params,
            details=details | {"kvol_files_per_second": s.small_files / kvol_down},
        ),
    ]


SCENARIOS = [
    Scenario(
        "s3.large", large, per_store=False, description="upload/materialize vs rclone on MinIO"
    ),
    Scenario("s3.small", small, per_store=False, description="10k small files to S3 vs rclone"),
]
