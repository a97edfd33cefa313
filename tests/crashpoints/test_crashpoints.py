"""Kill a real process at every store call and file system mutation of each operation, and
check after every kill that no data was lost or corrupted (see scenarios.py for the oracle).

The bounded run (every test run): every point of the core operations and of unpublishing
a copy-on-write copy on the filesystem store, evenly spread subsets of the others and of
MinIO. The long run (``--crash-long`` or ``KVOL_CRASH_LONG=1``): every point, bigger trees,
both stores and layouts, killed right before and right after each event.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.crashpoints import harness
from tests.crashpoints.conftest import SUMMARIES
from tests.minio import MinioServer

pytestmark = pytest.mark.crash


# (scenario, layout, points in the bounded run on the filesystem store, ... on MinIO);
# None is every point.
PLAN: list[tuple[str, str | None, int | None, int]] = [
    ("commit", None, None, 14),
    ("reload", None, None, 10),
    ("put", None, None, 10),
    ("rm-r", None, None, 6),
    ("restore", None, None, 6),
    ("gc", None, None, 6),
    ("prune", None, None, 6),
    ("publish", "overlay", 40, 6),
    ("publish", "plain", 25, 0),
    ("unpublish", "overlay", None, 10),
    ("unpublish", "plain", 40, 0),
    ("publish", "image", 20, 0),
    ("unpublish", "image", 20, 0),
]


def _id(entry: tuple[str, str | None, int | None, int]) -> str:
    return entry[0] + (f"-{entry[1]}" if entry[1] else "")


def _run(
    pool: harness.Pool,
    crash_dir: Path,
    entry: tuple[str, str | None, int | None, int],
    store: dict[str, Any],
    limit: int | None,
    long: bool,
) -> None:
    scenario, layout, _, _ = entry
    mounts = scenario in ("publish", "unpublish")
    if mounts and os.geteuid() != 0:
        pytest.fail("the node service's crash points mount: run the tests as root", pytrace=False)
    report = harness.campaign(
        pool,
        scenario,
        store,
        crash_dir,
        long=long,
        params={"layout": layout} if layout else None,
        select=harness.every if long or limit is None else harness.spread(limit),
        variants=("before", "after") if long else ("before",),
        mounts=mounts,
    )
    SUMMARIES.append(report.summary())
    assert not report.failures and not report.harness_problems, report.details()


@pytest.mark.parametrize("entry", PLAN, ids=_id)
def test_crash_points_filesystem_store(
    entry: tuple[str, str | None, int | None, int],
    crash_pool: harness.Pool,
    crash_dir: Path,
    crash_disk_dir: Path,
    crash_long: bool,
) -> None:
    where = crash_disk_dir if entry[1] == "image" else crash_dir
    _run(crash_pool, where, entry, {"kind": "fs"}, entry[2], crash_long)


@pytest.mark.s3
@pytest.mark.parametrize("entry", [e for e in PLAN if e[3]], ids=_id)
def test_crash_points_minio(
    entry: tuple[str, str | None, int | None, int],
    crash_pool: harness.Pool,
    crash_dir: Path,
    crash_long: bool,
    minio: MinioServer,
) -> None:
    store = {
        "kind": "s3",
        "bucket": minio.create_bucket(),
        "endpoint": minio.endpoint,
        "env": minio.env,
    }
    _run(crash_pool, crash_dir, entry, store, entry[3], crash_long)
