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


def test_the_same_operation_has_the_same_points(crash_pool: harness.Pool, crash_dir: Path) -> None:
    runs = []
    for n in range(2):
        reply = crash_pool.run(
            {
                "scenario": "commit",
                "store": {"kind": "fs"},
                "long": False,
                "params": {},
                "mounts": False,
                "dir": str(crash_dir / f"determinism-{n}"),
                "kill": None,
            }
        )
        assert reply["op_status"] == "exit 0", reply
        runs.append([(thread, index, what.split()[0]) for thread, index, what in reply["events"]])
    assert runs[0] == runs[1]
    assert len(runs[0]) > 20
