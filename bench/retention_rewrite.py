"""History retention: the checkpoint-rewrite workload, with and without a policy.

A training job rewrites one large checkpoint file again and again. Without a retention
policy every version stays in the store; with ``keep last N`` the operator's retention
pass (prune, then garbage collection: what ``kvol volume gc`` runs) bounds the store.
Both cases run side by side in the same run, each on a filesystem store of its own.

Time is simulated on the store's clock: after each rewrite every object of the volume is
made an hour older (the store dates objects by their mtime), so the real garbage
collection grace (an hour, its minimum) passes between rewrites, as it would for a job
that writes a checkpoint every hour and an operator that prunes every hour. After the
last rewrite one more simulated hour and pass show what the store settles at.

    python -m bench --only retention                      # 100 MiB x 50, keep the last 5
    python -m bench.retention_rewrite --size-mib 8 --rewrites 10 --keep-last 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import Context, Measurement, Result, Scenario, scratch_dir
from kvol.content import min_gc_grace
from kvol.repo import Repo
from kvol.retention import RetentionPolicy, prune_history, write_policy
from kvol.store import open_store
from kvol.workcopy import WorkingCopy

HOUR = 3600.0
#: Content is chunked at 8 MiB: every block of every version is made distinct, so the
#: store can share nothing between versions (a real checkpoint shares next to nothing).
BLOCK = 8 << 20


@dataclass(frozen=True)
class Workload:
    size_mib: int = 100
    rewrites: int = 50
    keep_last: int = 5

    @classmethod
    def quick(cls) -> Workload:
        return cls(size_mib=4, rewrites=12, keep_last=5)

    @property
    def file_bytes(self) -> int:
        return self.size_mib << 20


@dataclass(frozen=True)
class Outcome:
    #: Bytes of every object of the store (content, log, checkpoints, metadata).
    store_bytes: int
    #: The most the store held after any rewrite (and its pass).
    peak_bytes: int
    #: After one more simulated hour and pass with no rewrite.
    settled_bytes: int
    seconds: float
    prune_gc_seconds: float


def write_version(path: Path, size: int, version: int, base: bytes) -> None:
    """``size`` bytes, every 8 MiB block stamped with the version and its index."""
    block = bytearray(base)
    with open(path, "wb", buffering=0) as f:
        left, index = size, 0
        while left > 0:
            block[:16] = ((version << 64) | index).to_bytes(16, "big")
            piece = min(left, BLOCK)
            f.write(memoryview(block)[:piece])
            left -= piece
            index += 1


def _files(root: Path) -> list[Path]:
    return [Path(d) / n for d, _, names in os.walk(root) for n in names]


def store_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in _files(root))


def age(root: Path, seconds: float) -> None:
    """Every object under ``root`` becomes ``seconds`` older to the store's clock."""
    for path in _files(root):
        st = path.stat()
        os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


def run_case(
    workdir: Path,
    workload: Workload,
    policy: RetentionPolicy | None,
    log: Callable[[str], None] = lambda _: None,
) -> Outcome:
    """Rewrite the checkpoint ``workload.rewrites`` times, an hour apart, with a retention
    pass after each when there is a policy."""
    store_root = workdir / "store"
    # Durability does not change what is stored; fsync would only slow the run.
    store = open_store(f"file://{store_root}?fsync=false")
    grace = min_gc_grace()
    repo = Repo.create(store)
    if policy is not None:
        write_policy(store, repo.volume_id, policy)
    volume_root = store_root / "volumes" / repo.volume_id
    copy = WorkingCopy.create(repo, workdir / "copy")
    base = os.urandom(BLOCK)
    peak = 0
    pass_seconds = 0.0

    def one_pass() -> None:
        nonlocal pass_seconds
        if policy is None:
            return
        started = time.perf_counter()
        prune_history(repo, policy, grace_seconds=grace)
        repo.gc(grace_seconds=grace)
        pass_seconds += time.perf_counter() - started

    started = time.perf_counter()
    for version in range(1, workload.rewrites + 1):
        write_version(copy.root / "model.ckpt", workload.file_bytes, version, base)
        result = copy.commit(f"checkpoint {version}")
        if result.seq != version:
            raise AssertionError(f"rewrite {version} published {result}")
        age(volume_root, grace)
        one_pass()
        peak = max(peak, store_bytes(store_root))
        if version % 10 == 0:
            log(f"  {version} rewrites: store {store_bytes(store_root) / (1 << 20):,.0f} MiB")
    final = store_bytes(store_root)
    age(volume_root, grace)
    one_pass()
    settled = store_bytes(store_root)
    seconds = time.perf_counter() - started
    copy.close(final_commit=False)
    if repo.state().files["model.ckpt"].size != workload.file_bytes:
        raise AssertionError("the head lost the checkpoint")
    store.close()
    return Outcome(final, peak, settled, seconds, pass_seconds)


def checkpoint_rewrite(
    workdir: Path, workload: Workload, log: Callable[[str], None] = lambda _: None
) -> Result:
    policy = RetentionPolicy(keep_last=workload.keep_last)
    log(
        f"{workload.rewrites} rewrites of a {workload.size_mib} MiB checkpoint, {policy.describe()}"
    )
    bounded = run_case(workdir / "bounded", workload, policy, log)
    log("the same without a policy")
    unbounded = run_case(workdir / "unbounded", workload, None, log)
    size = workload.file_bytes
    return Result(
        "retention.checkpoint_rewrite",
        bounded.seconds,
        Measurement("the same rewrites with no retention policy", unbounded.seconds),
        params={
            "file_bytes": size,
            "rewrites": workload.rewrites,
            "keep_last": workload.keep_last,
            "gc_grace_seconds": min_gc_grace(),
            "simulated_seconds_between_rewrites": min_gc_grace(),
        },
        details={
            "bounded_store_bytes": bounded.store_bytes,
            "bounded_ratio_to_file": bounded.store_bytes / size,
            "bounded_peak_bytes": bounded.peak_bytes,
            "bounded_peak_ratio_to_file": bounded.peak_bytes / size,
            "bounded_settled_bytes": bounded.settled_bytes,
            "bounded_settled_ratio_to_file": bounded.settled_bytes / size,
            "unbounded_store_bytes": unbounded.store_bytes,
            "unbounded_ratio_to_file": unbounded.store_bytes / size,
            "bounded_over_unbounded": bounded.store_bytes / unbounded.store_bytes,
            "prune_gc_seconds_total": bounded.prune_gc_seconds,
            "prune_gc_seconds_per_pass": bounded.prune_gc_seconds / (workload.rewrites + 1),
        },
    )


def _scenario(ctx: Context) -> Result:
    return checkpoint_rewrite(
        ctx.workdir, Workload.quick() if ctx.quick else Workload(), log=ctx.log
    )


SCENARIOS = [
    Scenario(
        "retention.checkpoint_rewrite",
        _scenario,
        per_store=False,
        description="store size of a checkpoint rewritten 50 times, keep last 5 vs no policy",
    )
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.retention_rewrite", description=__doc__.split("\n")[0]
    )
    default = Workload()
    parser.add_argument("--size-mib", type=int, default=default.size_mib)
    parser.add_argument("--rewrites", type=int, default=default.rewrites)
    parser.add_argument("--keep-last", type=int, default=default.keep_last)
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: system temp)")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.rewrites < 1 or args.keep_last < 1:
        parser.error("--size-mib, --rewrites and --keep-last must be at least 1")
    workload = Workload(args.size_mib, args.rewrites, args.keep_last)

    def log(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    root = args.workdir or Path(os.environ.get("TMPDIR", "/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    with scratch_dir(root, "retention") as workdir:
        result = checkpoint_rewrite(workdir, workload, log)
    document: dict[str, Any] = {"kvol_bench": 1, "results": [result.to_dict()]}
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
