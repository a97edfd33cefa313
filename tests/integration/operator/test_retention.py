"""A Volume's spec.retention against a real kube-apiserver and a real filesystem store:
the schema refuses bad policies, the operator keeps the store's policy equal to the spec,
and its retention pass prunes, collects, measures and reports (status, Event, gauges).

Garbage collection keeps anything younger than its grace (an hour at least): the test ages
the volume's objects in the store, which is the store's clock, as the core's tests do."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvol.layout import parse_seq
from kvol.repo import Repo
from kvol.retention import RetentionPolicy, read_policy
from kvol.store import FilesystemStore
from tests.integration.operator.cluster import Cluster, Operator, wait_for
from tests.integration.operator.helpers import (
    get_volume,
    volume_yaml,
    wait_event,
    wait_ready,
    write_files,
)

pytestmark = pytest.mark.kube

SIZE = 64 * 1024
HOUR = 3600.0


@pytest.fixture
def pruning_operator(cluster: Cluster, default_store: Path, tmp_path: Path) -> Iterator[Operator]:
    """An operator whose retention passes run every second."""
    with Operator(cluster, tmp_path / "operator", prune_interval="1").running() as op:
        yield op


def _age(store_dir: Path, volume_id: str, seconds: float) -> None:
    past = time.time() - seconds
    for path in (store_dir / "volumes" / volume_id).rglob("*"):
        if path.is_file():
            os.utime(path, (past, past))


def _retention(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    status = (get_volume(cluster, namespace, name) or {}).get("status") or {}
    found: dict[str, Any] = status.get("retention") or {}
    return found


def _log_seqs(store_dir: Path, volume_id: str) -> list[int]:
    log = store_dir / "volumes" / volume_id / "log"
    return sorted(s for s in (parse_seq(p.name) for p in log.iterdir()) if s is not None)


def _gauge(text: str, metric: str, namespace: str, volume: str) -> float | None:
    pattern = rf'^{metric}\{{namespace="{namespace}",volume="{volume}"\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else None


@pytest.mark.parametrize(
    ("retention", "message"),
    [
        ("{keepLast: 0}", "spec.retention.keepLast: Invalid value: 0"),
        ("{keepFor: soon}", "spec.retention.keepFor: Invalid value"),
        ("{keepFor: 7days}", "spec.retention.keepFor: Invalid value"),
    ],
)
def test_bad_retention_is_refused(
    cluster: Cluster, namespace: str, retention: str, message: str
) -> None:
    result = cluster.apply(volume_yaml("bad", retention=retention), namespace, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_spec_retention_is_applied_pruned_on_schedule_and_reported(
    cluster: Cluster,
    pruning_operator: Operator,
    default_store: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    store = FilesystemStore(default_store)
    cluster.apply(volume_yaml("ckpt"), namespace)
    volume_id = wait_ready(cluster, namespace, "ckpt")["status"]["volumeId"]
    # A checkpoint rewritten five times: five versions stored, one in the head.
    for i in range(1, 6):
        write_files(store, volume_id, tmp_path / "copy", {"model.ckpt": bytes([i]) * SIZE})

    # Without a policy the pass only measures: the whole history is stored.
    def measured() -> dict[str, Any] | None:
        found = _retention(cluster, namespace, "ckpt")
        return found if found.get("storedBytes") == 5 * SIZE else None

    report = wait_for(measured, 20, "the storage of the unpruned volume")
    assert report["headBytes"] == SIZE
    assert (report["policy"], report["horizon"], report["prunedCommits"]) == (
        "keep every commit",
        0,
        0,
    )
    assert read_policy(store, volume_id).keeps_everything

    # Setting spec.retention writes the policy and runs a pass at once: the horizon moves
    # to the oldest commit kept; what is older stays for a grace.
    cluster.kubectl(
        "patch", "volume", "-n", namespace, "ckpt", "--type=merge",
        "-p", '{"spec": {"retention": {"keepLast": 2}}}',
    )  # fmt: skip

    def horizon_moved() -> dict[str, Any] | None:
        found = _retention(cluster, namespace, "ckpt")
        return found if found.get("horizon") == 4 else None

    report = wait_for(horizon_moved, 20, "the horizon at commit 4")
    assert read_policy(store, volume_id) == RetentionPolicy(keep_last=2)
    assert report["policy"] == RetentionPolicy(keep_last=2).describe()
    assert report["waitingCommits"] == 3 and report["storedBytes"] == 5 * SIZE
    assert _log_seqs(default_store, volume_id) == [1, 2, 3, 4, 5]

    # A grace later (the store's clock), the next pass deletes commits 1-3, then the
    # content only they named.
    _age(default_store, volume_id, 2 * HOUR)

    def freed() -> dict[str, Any] | None:
        found = _retention(cluster, namespace, "ckpt")
        return found if found.get("storedBytes") == 2 * SIZE else None

    report = wait_for(freed, 20, "the pruned versions to be collected")
    assert report["headBytes"] == SIZE and report["waitingCommits"] == 0
    assert _log_seqs(default_store, volume_id) == [4, 5]
    assert Repo(store, volume_id).state().files["model.ckpt"].size == SIZE
    wait_event(cluster, namespace, "ckpt", ("Normal", "Pruned"))
    # Each pass reports only what it deleted itself; the ones that did add up.
    pruned = [
        e
        for e in cluster.get_json(
            "events", "-n", namespace, "--field-selector", "involvedObject.name=ckpt"
        )["items"]
        if e["reason"] == "Pruned"
    ]
    assert any("deleted 3 commit(s)" in e["message"] for e in pruned), json.dumps(pruned)

    # The gauges say what the status says, per Volume.
    def gauges() -> tuple[float | None, float | None] | None:
        text = pruning_operator.metrics()
        got = (
            _gauge(text, "kvol_volume_head_bytes", namespace, "ckpt"),
            _gauge(text, "kvol_volume_stored_bytes", namespace, "ckpt"),
        )
        return got if got == (SIZE, 2 * SIZE) else None

    wait_for(gauges, 10, "the storage gauges")

    # Removing spec.retention clears the policy: every commit is kept again.
    cluster.kubectl(
        "patch", "volume", "-n", namespace, "ckpt", "--type=json",
        "-p", '[{"op": "remove", "path": "/spec/retention"}]',
    )  # fmt: skip
    wait_for(lambda: read_policy(store, volume_id).keeps_everything, 20, "the policy to be cleared")
    wait_for(
        lambda: _retention(cluster, namespace, "ckpt").get("policy") == "keep every commit",
        20,
        "a pass under the cleared policy",
    )
