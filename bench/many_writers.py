"""Many writers committing distinct files at once, each its own process with its own
working copy (as pods on nodes are), against a lone writer doing the same in the same run.

Every round, all writers write one new file, wait for each other, then commit at the same
instant; each commit's latency is measured inside its writer. The baseline is one writer
doing the same rounds alone: the target is a median within 1.5x of it.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from dataclasses import replace
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from bench.harness import Context, Measurement, Result, Scenario, Target
from bench.volumes import fresh_volume

#: Commits per writer.
ROUNDS = 3
#: Bytes of each committed file.
FILE_SIZE = 4096


def _writer(
    store_url: str,
    volume_id: str,
    root: str,
    name: str,
    rounds: int,
    barrier: Barrier,
    out: Any,
) -> None:
    from kvol.repo import Repo
    from kvol.store import open_store
    from kvol.workcopy import WorkingCopy

    store = open_store(store_url)
    try:
        copy = WorkingCopy.create(Repo(store, volume_id), Path(root))
        latencies: list[float] = []
        cpu_seconds = 0.0
        before = _counters()
        for i in range(rounds):
            (copy.root / f"{name}-{i}.bin").write_bytes(
                (f"{name}/{i}/".encode() * FILE_SIZE)[:FILE_SIZE]
            )
            barrier.wait()
            started, cpu = time.perf_counter(), time.process_time()
            result = copy.commit()
            latencies.append(time.perf_counter() - started)
            cpu_seconds += time.process_time() - cpu
            if result.seq is None or result.files != 1:
                raise AssertionError(f"{name} round {i}: commit published {result}")
            barrier.wait()
        after = _counters()
        copy.close(final_commit=False)
        counts = {k: after[k] - before[k] for k in after} | {"cpu_seconds": cpu_seconds}
        out.put((name, latencies, counts, None))
    except BaseException as exc:
        out.put((name, [], {}, f"{type(exc).__name__}: {exc}"))
        barrier.abort()
    finally:
        store.close()


def _counters() -> dict[str, float]:
    """This process's lost log positions and store requests so far (kvol's metrics)."""
    from prometheus_client import REGISTRY

    totals = {"conflicts": 0.0, "store_requests": 0.0}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == "kvol_commit_conflicts_total":
                totals["conflicts"] += sample.value
            elif sample.name == "kvol_store_requests_total":
                totals["store_requests"] += sample.value
    return totals


def _round_trip(
    ctx: Context, store_url: str, writers: int, rounds: int
) -> tuple[list[float], dict[str, float]]:
    """Latencies of every commit of ``writers`` processes committing ``rounds`` times, and
    the sums of their counters over those commits."""
    mp = multiprocessing.get_context("spawn")
    barrier = mp.Barrier(writers)
    out = mp.Queue()
    with fresh_volume(store_url) as repo:
        procs = [
            mp.Process(
                target=_writer,
                args=(
                    store_url,
                    repo.volume_id,
                    str(ctx.workdir / f"w{writers}-{i}"),
                    f"w{i}",
                    rounds,
                    barrier,
                    out,
                ),
            )
            for i in range(writers)
        ]
        for p in procs:
            p.start()
        latencies: list[float] = []
        counted = {"conflicts": 0.0, "store_requests": 0.0, "cpu_seconds": 0.0}
        errors: list[str] = []
        for _ in procs:
            _name, got, counts, error = out.get(timeout=900)
            latencies += got
            for key, value in counts.items():
                counted[key] += value
            if error:
                errors.append(error)
        for p in procs:
            p.join()
        if errors:
            raise RuntimeError(f"{len(errors)} writer(s) failed: {errors[0]}")
        head = repo.head()
        if head != writers * rounds:
            raise AssertionError(f"{writers * rounds} commits made, the log holds {head}")
        files = len(repo.state().files)
        if files != writers * rounds:
            raise AssertionError(f"{writers * rounds} files committed, the volume holds {files}")
    return latencies, counted


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def many_writers(ctx: Context) -> list[Result]:
    if ctx.store_url is None:
        raise ValueError("this scenario runs against a store")
    counts = (4,) if ctx.quick else (16, 64)
    rounds = 2 if ctx.quick else ROUNDS
    # The lone writer makes as many commits as the largest group, so its median is as firm.
    ctx.log(f"lone writer, {rounds * max(counts)} commits")
    lone, lone_counts = _round_trip(ctx, ctx.store_url, 1, rounds * max(counts))
    lone_median = statistics.median(lone)
    lone_cpu = lone_counts["cpu_seconds"] / len(lone)
    cpus = len(os.sched_getaffinity(0))
    results = []
    for n in counts:
        ctx.log(f"{n} writers x {rounds} commits")
        many, counted = _round_trip(ctx, ctx.store_url, n, rounds)
        median, worst = statistics.median(many), max(many)
        results.append(
            Result(
                f"writers.many_{n}",
                median,
                Measurement("one writer alone (median)", lone_median),
                Target("speedup_at_least", 1 / 1.5, "median within 1.5x of a lone writer"),
                params={"writers": n, "rounds": rounds, "file_size": FILE_SIZE},
                details={
                    "median_seconds": median,
                    "p99_seconds": _p99(many),
                    "worst_seconds": worst,
                    "median_vs_lone": median / lone_median,
                    "p99_vs_lone": _p99(many) / lone_median,
                    "worst_vs_lone": worst / lone_median,
                    "lone_median_seconds": lone_median,
                    "lone_worst_seconds": max(lone),
                    "positions_lost_per_commit": counted["conflicts"] / len(many),
                    "store_requests_per_commit": counted["store_requests"] / len(many),
                    "lone_store_requests_per_commit": lone_counts["store_requests"] / len(lone),
                    "cpu_seconds_per_commit": counted["cpu_seconds"] / len(many),
                    "lone_cpu_seconds_per_commit": lone_cpu,
                    # With every writer starting at once, the CPUs alone finish half the
                    # commits no sooner than this (the store's own CPU not counted).
                    "cpu_bound_median_seconds": n * lone_cpu / 2 / cpus,
                },
            )
        )
    return results


def many_writers_minio(ctx: Context) -> list[Result]:
    from bench.s3_minio import kvol_env, server

    kvol_env()  # spawned writers inherit the credentials
    url = server().url(server().create_bucket(), "kvol")
    results = many_writers(replace(ctx, store_url=url))
    for result in results:
        result.store = url
    return results


SCENARIOS = [
    Scenario(
        "writers.many",
        many_writers,
        description="16 and 64 writer processes committing distinct files at once vs one",
    ),
    Scenario(
        "s3.writers.many",
        many_writers_minio,
        per_store=False,
        description="the same on MinIO",
    ),
]
