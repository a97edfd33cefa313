"""The harness itself: its enumeration is deterministic, and its oracle catches a writer
that is not crash-safe."""

from __future__ import annotations

from pathlib import Path

from tests.crashpoints import harness


def test_a_write_split_over_two_commits_is_caught(
    crash_pool: harness.Pool, crash_dir: Path
) -> None:
    report = harness.campaign(crash_pool, "planted-split-publish", {"kind": "fs"}, crash_dir)
    assert not report.harness_problems, report.details()
    halves = [f for f in report.failures if f.outcome == "neither"]
    # Killed between the two entries (after the first landed, before the second did).
    assert halves, report.details()
    assert all("neither the old nor the new state" in f.problems[0] for f in halves)
    assert report.outcomes["old"] > 0 and report.outcomes["new"] > 0


def _dry_run_points(
    pool: harness.Pool, where: Path, scenario: str, params: dict[str, str], n: int
) -> list[tuple[str, int, str]]:
    reply = pool.run(
        {
            "scenario": scenario,
            "store": {"kind": "fs"},
            "long": False,
            "params": params,
            "mounts": scenario in ("publish", "unpublish"),
            "dir": str(where / f"determinism-{scenario}-{n}"),
            "kill": None,
        }
    )
    assert reply["op_status"] == "exit 0", reply
    return [(thread, index, what.split()[0]) for thread, index, what in reply["events"]]


def test_the_same_operation_has_the_same_points(crash_pool: harness.Pool, crash_dir: Path) -> None:
    runs = [_dry_run_points(crash_pool, crash_dir, "commit", {}, n) for n in range(2)]
    assert runs[0] == runs[1]
    assert len(runs[0]) > 20


def test_a_lazily_fetched_mount_has_the_same_points(
    crash_pool: harness.Pool, crash_disk_dir: Path
) -> None:
    """Reads of a lazily fetched image are served by filler threads: which thread takes
    a part, and whether a part the pod's reads asked for is still being fetched when the
    operation starts, must not change the points from one run to the next."""
    params = {"layout": "image", "slow_fills": "0.2"}
    runs = [_dry_run_points(crash_pool, crash_disk_dir, "unpublish", params, n) for n in range(3)]
    assert runs[0] == runs[1] == runs[2]
    assert not [e for e in runs[0] if e[0].startswith("kvol-blob-fill")], runs[0]
