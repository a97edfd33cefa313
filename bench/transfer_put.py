"""Transfers and memory: ``kvol volume put`` beside ``rclone copy``, and peak memory.

Every kvol operation runs as a child process of its own (the CLI, or a short script for a
working-copy commit), as does its baseline, so each one's peak resident memory is its
own (``wait4``'s ``ru_maxrss``) and no warm state of the harness helps either side.

* ``transfer.put_small_files``: ``kvol volume put`` of 10,000 small files vs
  ``rclone copy`` of the same tree to a directory on the same disk (``cp -r`` beside it).
* ``transfer.put_large``: the same for one 1 GiB file. Each put and its baselines run
  ``RUNS`` times, alternating which goes first; the medians count.
* ``memory.commit_large`` / ``memory.commit_small_files``: a working-copy commit of one
  1 GiB file / 100,000 small files; kvol's peak memory must stay under ``RSS_TARGET_MIB``.

Peak memory is in ``details`` (``kvol_peak_rss_mib``, the baselines' beside it, and
``rss_within_target``; the launcher's own ~9 MiB is a floor under every figure); the
memory results carry no time target (reported only).
"""

from __future__ import annotations

import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import baselines
from bench.harness import Context, Measurement, Result, RunFn, Scenario, Target, as_scenario
from bench.tree import tree_bytes, write_large_files, write_small_files
from bench.volumes import is_durable
from kvol.repo import Repo
from kvol.store import open_store
from kvol.workcopy import WorkingCopy

#: The peak resident memory any measured kvol operation may reach.
RSS_TARGET_MIB = 150.0
#: Files of the many-small-files commit whose memory is measured.
MEMORY_SMALL_FILES = 100_000
QUICK_MEMORY_SMALL_FILES = 2_000
#: Runs of each put and its baselines (alternating which goes first); medians count.
RUNS = 3

_COMMIT_SCRIPT = """\
import sys
from kvol.store import open_store
from kvol.workcopy import WorkingCopy
wc = WorkingCopy.open(sys.argv[1], store=open_store(sys.argv[2]))
result = wc.commit()
wc.close(final_commit=False)
print(result.files)
"""


#: Runs one command and writes its peak resident memory (KiB) to the file named first. A
#: child forked from the harness would inherit the harness's peak as its own (Linux
#: carries ``maxrss`` over fork and exec), so every command starts from this small process.
_LAUNCHER = """\
import os, sys
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _run_child(cmd: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``cmd`` to completion: its wall-clock seconds and peak resident MiB."""
    with tempfile.NamedTemporaryFile(prefix="kvol-bench-rss-") as report:
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, report.name, *cmd]
        started = time.perf_counter()
        proc = subprocess.run(
            launcher, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
        )
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)!r} failed ({proc.returncode}): "
                f"{proc.stderr.decode(errors='replace')}"
            )
        # Linux gives ru_maxrss in KiB.
        return elapsed, int(Path(report.name).read_text()) / 1024


def _kvol(store_url: str, *args: str) -> tuple[float, float]:
    binary = shutil.which("kvol", path=os.path.dirname(sys.executable)) or "kvol"
    env = {k: v for k, v in os.environ.items() if k != "KVOL_STORE"}
    return _run_child([binary, "--store", store_url, *args], env)


def _rclone_local(src: Path, dst: Path) -> tuple[float, float]:
    binary = baselines.require("rclone")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    env["RCLONE_CONFIG"] = os.devnull
    return _run_child([binary, "copy", str(src), str(dst)], env)


def _rclone_to_minio(src: Path, store_url: str, prefix: str) -> tuple[float, float]:
    from bench.s3_minio import REMOTE, rclone_env

    bucket = urlsplit(store_url).netloc
    binary = baselines.require("rclone")
    return _run_child([binary, "copy", str(src), f"{REMOTE}:{bucket}/{prefix}"], rclone_env())


def _cp(src: Path, dst: Path) -> tuple[float, float]:
    return _run_child([baselines.require("cp"), "-r", str(src), str(dst)])


def _sync_seconds() -> float:
    started = time.perf_counter()
    os.sync()
    return time.perf_counter() - started


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _put(ctx: Context, name: str, src: Path, files: int, what: str) -> Result:
    """Each side ``RUNS`` times, alternating which goes first; medians count."""
    assert ctx.store_url is not None
    url = ctx.store_url
    store = open_store(url)
    durable = is_durable(store)
    on_s3 = url.startswith("s3:")
    samples: dict[str, list[tuple[float, float]]] = {
        k: [] for k in ("kvol", "rclone", "rclone_sync", "cp", "cp_sync", "rclone_s3")
    }
    load_before = _load()
    try:
        for run in range(1 if ctx.quick else RUNS):
            volume = f"bench-put-{os.getpid()}-{run}"
            _kvol(url, "volume", "create", volume)

            def kvol(volume: str = volume) -> None:
                baselines.drop_dirty_pages()
                samples["kvol"].append(_kvol(url, "volume", "put", volume, str(src), "/data"))
                published = [e for e in _listed(store, volume) if e.lstrip("/").startswith("data/")]
                if len(published) != files:
                    raise AssertionError(f"put published {len(published)} files, not {files}")
                _kvol(url, "volume", "delete", "--yes", volume)

            def others(run: int = run) -> None:
                baselines.drop_dirty_pages()
                took, rss = _rclone_local(src, ctx.workdir / "rclone")
                samples["rclone"].append((took, rss))
                # A durable store's put pays for the write-back; so do these forms.
                samples["rclone_sync"].append((took + _sync_seconds(), rss))
                shutil.rmtree(ctx.workdir / "rclone")
                baselines.drop_dirty_pages()
                took, rss = _cp(src, ctx.workdir / "cp")
                samples["cp"].append((took, rss))
                samples["cp_sync"].append((took + _sync_seconds(), rss))
                shutil.rmtree(ctx.workdir / "cp")
                if on_s3:
                    # On S3 the baseline that counts is rclone sending to the same server.
                    samples["rclone_s3"].append(_rclone_to_minio(src, url, f"rclone{run}"))

            for step in (kvol, others) if run % 2 == 0 else (others, kvol):
                step()
    finally:
        store.close()

    def median(key: str) -> float:
        return statistics.median(t for t, _ in samples[key])

    def peak(key: str) -> float:
        return max((m for _, m in samples[key]), default=0.0)

    kvol_s, kvol_rss = median("kvol"), peak("kvol")
    rclone_s, rclone_sync_s = median("rclone"), median("rclone_sync")
    cp_s, cp_sync_s = median("cp"), median("cp_sync")
    rclone_rss, cp_rss = peak("rclone"), peak("cp")
    to_s3 = (median("rclone_s3"), peak("rclone_s3")) if on_s3 else None
    rclone = Measurement(
        "rclone copy && sync" if durable else "rclone copy", rclone_sync_s if durable else rclone_s
    )
    cp = Measurement("cp -r && sync" if durable else "cp -r", cp_sync_s if durable else cp_s)
    extra = [cp]
    if to_s3 is not None:
        extra.append(rclone)
        rclone = Measurement("rclone copy to the same MinIO", to_s3[0])
    return Result(
        name,
        kvol_s,
        rclone,
        Target("speedup_at_least", 1.0, f"kvol volume put at par with {rclone.name}"),
        params={
            "files": files,
            "what": what,
            "bytes": tree_bytes(src),
            "durable_store": durable,
            "runs": len(samples["kvol"]),
        },
        # The other form of each (with or without the write-back) is reported too.
        other_baselines=[
            *extra,
            Measurement(
                "rclone copy" if durable else "rclone copy && sync",
                rclone_s if durable else rclone_sync_s,
            ),
            Measurement("cp -r" if durable else "cp -r && sync", cp_s if durable else cp_sync_s),
        ],
        details={
            "kvol_peak_rss_mib": kvol_rss,
            "rclone_peak_rss_mib": rclone_rss if to_s3 is None else to_s3[1],
            "cp_peak_rss_mib": cp_rss,
            "load_average_before": load_before,
            "load_average_after": _load(),
        },
    )


def _listed(store: Any, volume: str) -> list[str]:
    from kvol.volume import FileEntryType, Volume

    entries = Volume.from_name(volume, store=store).listdir("/", recursive=True)
    return [e.path for e in entries if e.type != FileEntryType.DIRECTORY]


def put_small_files(ctx: Context) -> Result:
    s = ctx.sizes
    src = ctx.workdir / "src"
    ctx.log(f"writing {s.small_files} files of {s.small_file_size} bytes")
    write_small_files(src, s.small_files, s.small_file_size)
    return _put(ctx, "transfer.put_small_files", src, s.small_files, "small files")


def put_large(ctx: Context) -> Result:
    s = ctx.sizes
    src = ctx.workdir / "src"
    ctx.log(f"writing one file of {s.large_bytes >> 20} MiB")
    write_large_files(src, s.large_bytes, 1)
    return _put(ctx, "transfer.put_large", src, 1, "one large file")


def _git_commit_all(repo: Path) -> tuple[float, float]:
    """``git add -A && git commit`` of a fresh repository at ``repo``: seconds and the peak
    resident MiB of its largest process (a shell's rusage covers the children it waited
    for)."""
    baselines.git_init(repo)
    g = shlex.join([baselines.require("git"), *baselines.GIT_OPTIONS, "-C", str(repo)])
    return _run_child(
        ["/bin/sh", "-c", f"{g} add -A && {g} commit -q -m bench"],
        {**os.environ, **baselines.GIT_ENV},
    )


def _commit_memory(
    ctx: Context, name: str, write: Any, files: int, what: str, *, git: bool = False
) -> Result:
    assert ctx.store_url is not None
    store = open_store(ctx.store_url)
    repo = Repo.create(store)
    try:
        root = ctx.workdir / "wc"
        WorkingCopy.create(repo, root).close(final_commit=False)
        write(root / "data")
        script = ctx.workdir / "commit.py"
        script.write_text(_COMMIT_SCRIPT)
        baselines.drop_dirty_pages()
        load_before = _load()
        kvol_s, kvol_rss = _run_child([sys.executable, str(script), str(root), ctx.store_url])
        baselines.drop_dirty_pages()
        cp_s, cp_rss = _cp(root / "data", ctx.workdir / "cp")
        cp_sync_s = cp_s + _sync_seconds()
        extra: list[Measurement] = []
        rss: dict[str, float] = {}
        if git:
            # The same tree, committed by git in the copy cp just made.
            baselines.drop_dirty_pages()
            git_s, rss["git_peak_rss_mib"] = _git_commit_all(ctx.workdir / "cp")
            extra.append(Measurement("git add -A && git commit", git_s))
    finally:
        repo.destroy()
        store.close()
    return Result(
        name,
        kvol_s,
        Measurement("cp -r && sync", cp_sync_s),
        None,
        params={"files": files, "what": what, "rss_target_mib": RSS_TARGET_MIB},
        other_baselines=extra,
        details={
            "kvol_peak_rss_mib": kvol_rss,
            "cp_peak_rss_mib": cp_rss,
            **rss,
            "rss_within_target": kvol_rss <= RSS_TARGET_MIB,
            "load_average_before": load_before,
            "load_average_after": _load(),
        },
    )


def commit_large_memory(ctx: Context) -> Result:
    size = ctx.sizes.large_bytes
    return _commit_memory(
        ctx,
        "memory.commit_large",
        lambda d: write_large_files(d, size, 1),
        1,
        f"one file of {size >> 20} MiB",
    )


def commit_small_memory(ctx: Context) -> Result:
    count = QUICK_MEMORY_SMALL_FILES if ctx.quick else MEMORY_SMALL_FILES
    size = ctx.sizes.small_file_size
    return _commit_memory(
        ctx,
        "memory.commit_small_files",
        lambda d: write_small_files(d, count, size),
        count,
        f"{count} files of {size} bytes",
        git=True,
    )


def _on_minio(scenario: Scenario) -> RunFn:
    def run(ctx: Context) -> Any:
        from bench.s3_minio import kvol_env, server

        kvol_env()
        url = server().url(server().create_bucket(), "kvol")
        result = scenario.run(replace(ctx, store_url=url))
        assert isinstance(result, Result)
        result.name = "s3." + result.name
        result.store = url
        return result

    return run


_LOCAL = [
    Scenario(
        "transfer.put_small_files", put_small_files, description="put of small files vs rclone"
    ),
    Scenario("transfer.put_large", put_large, description="put of one large file vs rclone"),
    Scenario("memory.commit_large", commit_large_memory, description="peak RSS, large commit"),
    Scenario(
        "memory.commit_small_files", commit_small_memory, description="peak RSS, 100k-file commit"
    ),
]

SCENARIOS = [
    *_LOCAL,
    *(
        Scenario(
            f"s3.{s.name}", _on_minio(s), per_store=False, description=f"{s.description} (MinIO)"
        )
        for s in map(as_scenario, _LOCAL)
    ),
]
