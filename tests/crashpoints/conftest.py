"""Fixtures of the crash-point harness: zygote processes, a RAM disk for the points, MinIO.

The bounded run is part of every test run; ``--crash-long`` (when this directory is named
on the command line) or ``KVOL_CRASH_LONG=1`` runs every point with bigger trees, on both
stores, killed both before and after each event. ``KVOL_CRASH_JOBS`` sets how many points
run at once (default: the number of CPUs, at most 4).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol import publish_turns
from tests.crashpoints import harness
from tests.minio import MinioServer, minio  # noqa: F401 (fixture)

#: Summaries of every campaign run in this session, printed at its end.
SUMMARIES: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--crash-long",
        action="store_true",
        default=False,
        help="crash harness: every point, bigger trees, both stores, kills before and after",
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARIES:
        terminalreporter.section("crash points")
        for line in SUMMARIES:
            terminalreporter.write_line(line)


def _long(config: pytest.Config) -> bool:
    option = False
    # The option exists only when this directory was named on the command line.
    with contextlib.suppress(ValueError):
        option = bool(config.getoption("--crash-long"))
    return option or os.environ.get("KVOL_CRASH_LONG") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _long(config):
        for item in items:
            if item.get_closest_marker("crash"):
                item.add_marker(pytest.mark.timeout(6 * 3600))


@pytest.fixture(scope="session")
def crash_long(request: pytest.FixtureRequest) -> bool:
    return _long(request.config)


def _tmpfs(where: Path) -> bool:
    """A RAM disk at ``where``: fsync and syncfs cost nothing there, and a process kill
    (what the harness does) keeps the page cache, so nothing about the crash changes."""
    if os.geteuid() != 0:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    rc: int = libc.mount(b"tmpfs", os.fsencode(where), b"tmpfs", 0, b"size=4g,mode=0700")
    return rc == 0


@pytest.fixture(scope="session")
def crash_disk_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Points on the machine's disk, not a RAM disk: lazy fetching needs fanotify
    pre-content events, which tmpfs does not have."""
    work = tmp_path_factory.mktemp("crash-disk") / "points"
    work.mkdir()
    return work


@pytest.fixture(scope="session")
def crash_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("crash")
    work = base / "points"
    work.mkdir()
    mounted = _tmpfs(work)
    try:
        yield work
    finally:
        if mounted:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.umount2(os.fsencode(work), 2)


@pytest.fixture(scope="session")
def crash_pool(crash_dir: Path) -> Iterator[harness.Pool]:
    # Made now, not by the first commit of a campaign: a point is an event's number, and
    # the first run must not make directories the runs after it find there.
    publish_turns.lock_dir()
    jobs = int(os.environ.get("KVOL_CRASH_JOBS", min(os.cpu_count() or 1, 4)))
    with harness.pool(jobs, crash_dir.parent) as workers:
        yield workers
