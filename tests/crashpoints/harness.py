"""The crash-point harness, driven from the test process.

:func:`campaign` runs one scenario once without a kill (the dry run enumerates its events
and checks that the operation itself is right), then once per chosen point with a SIGKILL
at that event, and collects what the oracle found. A point whose kill did not land on the
event the dry run saw there is reported as a harness problem: the enumeration must be
deterministic for the points to mean anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# The repository root goes last on the path: its operator/ must not shadow the stdlib.
_BOOT = (
    f"import sys; sys.path.append({str(REPO)!r}); "
    "from tests.crashpoints.runner import serve; serve()"
)


class Zygote:
    def __init__(self, log: Path) -> None:
        env = {**os.environ, "PYTHONSAFEPATH": "1"}
        with open(log, "ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                text=True,
                cwd="/",
            )

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the crash harness zygote died ({self.process.poll()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Pool:
    """``jobs`` zygotes; :meth:`map` runs requests on them in parallel."""

    def __init__(self, jobs: int, log_dir: Path) -> None:
        self._free: queue.Queue[Zygote] = queue.Queue()
        self.zygotes = [Zygote(log_dir / f"zygote-{i}.log") for i in range(jobs)]
        for z in self.zygotes:
            self._free.put(z)
        self.jobs = jobs

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        z = self._free.get()
        try:
            return z.run(request)
        finally:
            self._free.put(z)

    def close(self) -> None:
        for z in self.zygotes:
            z.close()


@contextmanager
def pool(jobs: int, log_dir: Path) -> Iterator[Pool]:
    p = Pool(jobs, log_dir)
    try:
        yield p
    finally:
        p.close()


@dataclass(frozen=True)
class Point:
    thread: str
    index: int
    what: str


@dataclass
class Failure:
    point: str
    variant: str
    outcome: str
    problems: list[str]
    directory: str

    def __str__(self) -> str:
        lines = [f"  killed {self.variant} {self.point} -> {self.outcome}"]
        lines += [f"      {p}" for p in self.problems]
        lines.append(f"      (kept in {self.directory})")
        return "\n".join(lines)


@dataclass
class Report:
    scenario: str
    store: str
    enumerated: int
    by_thread: dict[str, int]
    run: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    harness_problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        threads = ", ".join(f"{t} {n}" for t, n in sorted(self.by_thread.items()))
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        return (
            f"{self.scenario}/{self.store}: {self.enumerated} points enumerated ({threads}); "
            f"{self.run} killed; volume after the kill: {outcomes}; "
            f"{len(self.failures)} failed; {len(self.harness_problems)} harness problems; "
            f"{self.seconds:.1f} s"
        )

    def details(self) -> str:
        parts = [self.summary()]
        parts += [str(f) for f in self.failures[:40]]
        if len(self.failures) > 40:
            parts.append(f"  ... and {len(self.failures) - 40} more")
        parts += [f"  harness: {p}" for p in self.harness_problems[:20]]
        return "\n".join(parts)


#: Directories of failed points kept per campaign.
KEEP_FAILED = 10
#: Chooses which of the enumerated points to run.
Select = Callable[[list[Point]], list[Point]]


def every(points: list[Point]) -> list[Point]:
    return points


def spread(n: int) -> Select:
    """At most ``n`` points, evenly spread over the operation (first and last included)."""

    def choose(points: list[Point]) -> list[Point]:
        if len(points) <= n:
            return points
        step = (len(points) - 1) / (n - 1)
        return [points[round(i * step)] for i in range(n)]

    return choose


def campaign(
    workers: Pool,
    scenario: str,
    store: dict[str, Any],
    base: Path,
    *,
    long: bool = False,
    params: dict[str, Any] | None = None,
    select: Select = every,
    variants: Sequence[str] = ("before",),
    mounts: bool = False,
) -> Report:
    started = time.monotonic()
    label = f"{scenario}{'-' + params['layout'] if params and 'layout' in params else ''}"
    common = {
        "scenario": scenario,
        "store": store,
        "long": long,
        "params": params or {},
        "mounts": mounts,
    }
    dry_dir = base / f"{label}-{store['kind']}-dry"
    dry = workers.run({**common, "dir": str(dry_dir), "kill": None})
    if "error" in dry:
        raise AssertionError(f"{label}: the dry run's point process failed:\n{dry['error']}")
    if dry["op_error"] or dry["op_status"] != "exit 0":
        raise AssertionError(
            f"{label}: the operation fails without any crash ({dry['op_status']}):\n"
            f"{dry['op_error']}\n(kept in {_keep(dry_dir, base)})"
        )
    if dry["oracle"]["problems"]:
        raise AssertionError(
            f"{label}: the operation, not killed, leaves a wrong result: "
            + "; ".join(dry["oracle"]["problems"])
            + f" (kept in {_keep(dry_dir, base)})"
        )
    shutil.rmtree(dry_dir, ignore_errors=True)
    points = [Point(t, i, w) for t, i, w in dry["events"]]
    report = Report(f"{label}", store["kind"], len(points), dict(Counter(p.thread for p in points)))
    chosen = select(points)
    planned: list[tuple[Point, str, Path]] = [
        (point, variant, base / f"{label}-{store['kind']}-{variant}-{n:04d}")
        for variant in variants
        for n, point in enumerate(chosen)
    ]
    lock = threading.Lock()

    def one(planned_point: tuple[Point, str, Path]) -> None:
        p, variant, where = planned_point
        reply = workers.run(
            {**common, "dir": str(where), "kill": [p.thread, p.index, variant == "after"]}
        )
        # Judged and cleaned up at once: a long run's points would not fit on the disk.
        with lock:
            _judge(report, p, variant, where, reply, base)

    with ThreadPoolExecutor(workers.jobs) as ex:
        list(ex.map(one, planned))
    report.seconds = time.monotonic() - started
    return report


def _judge(
    report: Report, p: Point, variant: str, where: Path, reply: dict[str, Any], base: Path
) -> None:
    name = f"#{p.index} of {p.thread} ({p.what})"
    report.run += 1
    if "error" in reply:
        report.harness_problems.append(f"{name}: {reply['error'][-800:]}")
        shutil.rmtree(where, ignore_errors=True)
        return
    killed = reply["killed"]
    if reply["op_status"] != f"signal {9}" or killed is None:
        report.harness_problems.append(
            f"{name}: not reached, the operation ended with {reply['op_status']} "
            f"(is its enumeration deterministic?) {reply['op_error'] or ''}"[:800]
        )
    else:
        _, thread, index, what = killed.split("\t", 3)
        # Names may differ between runs (temporary names, hashes of the point's own
        # paths, and the order a directory lists them in); the kind of call may not.
        if (thread, int(index), what.split()[0]) != (p.thread, p.index, p.what.split()[0]):
            report.harness_problems.append(f"{name}: the kill landed on another event: {what!r}")
    oracle = reply["oracle"]
    report.outcomes[oracle["outcome"]] += 1
    if oracle["problems"]:
        where_now = _keep(where, base) if len(report.failures) < KEEP_FAILED else "not kept"
        report.failures.append(
            Failure(name, variant, oracle["outcome"], oracle["problems"], where_now)
        )
    shutil.rmtree(where, ignore_errors=True)


def _keep(where: Path, base: Path) -> str:
    """Copy a point's directory off the points' (RAM) disk, for whoever investigates."""
    kept = base.parent / "kept" / where.name
    kept.parent.mkdir(exist_ok=True)
    # Sockets and FIFOs (a control socket) are not copied; what could be, is.
    with contextlib.suppress(shutil.Error):
        shutil.copytree(where, kept, symlinks=True, dirs_exist_ok=True, copy_function=_copy_file)
    return str(kept)


def _copy_file(src: str, dst: str) -> None:
    if stat.S_ISREG(os.lstat(src).st_mode):
        shutil.copy2(src, dst)
