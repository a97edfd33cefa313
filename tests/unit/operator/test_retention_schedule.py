"""spec.retention as the operator parses it, when a Volume's retention pass is due, and
what the pass measures for the storage gauges."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kvol.errors import InvalidArgument
from kvol.operator.main import main
from kvol.operator.metrics import StorageTracker
from kvol.operator.reconcile import Reconciler, Settings
from kvol.operator.resources import VolumeSpec
from kvol.operator.specs import rfc3339
from kvol.repo import Repo
from kvol.retention import RetentionPolicy, storage_usage
from kvol.store import FilesystemStore
from kvol.workcopy import WorkingCopy

NOW = 1_800_000_000.0


def test_spec_retention_parses_into_the_stores_policy() -> None:
    assert VolumeSpec.parse({}).retention is None
    assert VolumeSpec.parse({"retention": {}}).retention is None
    assert VolumeSpec.parse({}).retention_policy.keeps_everything
    spec = VolumeSpec.parse({"retention": {"keepLast": 5, "keepFor": "7d"}})
    assert spec.retention == RetentionPolicy(keep_last=5, keep_for_seconds=7 * 86400.0)


@pytest.mark.parametrize(
    ("retention", "field"),
    [
        ({"keepLast": 0}, "keepLast"),
        ({"keepLast": True}, "keepLast"),
        ({"keepFor": "soon"}, "keepFor"),
        ({"keepFor": 30}, "keepFor"),
        ({"keepEvery": 3}, "keepEvery"),
    ],
)
def test_bad_spec_retention_names_the_field(retention: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        VolumeSpec.parse({"retention": retention})


def _volume(retention: Mapping[str, Any] | None, status: Mapping[str, Any]) -> dict[str, Any]:
    spec = {} if retention is None else {"retention": dict(retention)}
    return {
        "metadata": {"namespace": "ns", "name": "v", "uid": "u1", "generation": 2},
        "spec": spec,
        "status": {"phase": "Ready", "volumeId": "vid", "observedGeneration": 2, **status},
    }


def _reconciler(interval: float) -> Reconciler:
    # retention_due reads only the status the operator knows: no cluster, no store.
    return Reconciler(None, None, Settings(prune_interval=interval), lambda *a: None)  # type: ignore[arg-type]


def _ran(seconds_ago: float, policy: str) -> dict[str, Any]:
    return {"retention": {"lastRun": rfc3339(NOW - seconds_ago), "policy": policy}}


def test_a_pass_is_due_a_prune_interval_after_the_last() -> None:
    rec = _reconciler(3600)
    keep5 = {"keepLast": 5}
    described = RetentionPolicy(keep_last=5).describe()
    assert rec.retention_due(_volume(keep5, {}), NOW)  # never ran
    assert not rec.retention_due(_volume(keep5, _ran(60, described)), NOW)
    assert rec.retention_due(_volume(keep5, _ran(3600, described)), NOW)
    # Volumes without a policy are measured on the same schedule.
    assert not rec.retention_due(_volume(None, _ran(60, "keep every commit")), NOW)


def test_a_changed_policy_is_due_at_once() -> None:
    rec = _reconciler(3600)
    old = RetentionPolicy(keep_last=5).describe()
    assert rec.retention_due(_volume({"keepLast": 2}, _ran(60, old)), NOW)
    assert rec.retention_due(_volume(None, _ran(60, old)), NOW)  # cleared


def test_no_pass_when_off_or_not_ready() -> None:
    assert not _reconciler(0).retention_due(_volume({"keepLast": 2}, {}), NOW)
    pending = _volume({"keepLast": 2}, {"phase": "Pending"})
    assert not _reconciler(3600).retention_due(pending, NOW)
    deleting = _volume({"keepLast": 2}, {})
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not _reconciler(3600).retention_due(deleting, NOW)


def test_storage_gauges_one_series_per_volume_until_forgotten() -> None:
    tracker = StorageTracker()
    tracker.set("u1", "team", "data", 100, 500)
    tracker.set("u1", "team", "data", 100, 200)  # a later pass replaces the numbers
    tracker.set("u2", "other", "data", 7, 7)
    got = {(s.name, s.labels["namespace"], s.value) for f in tracker.collect() for s in f.samples}
    assert got == {
        ("kvol_volume_head_bytes", "team", 100),
        ("kvol_volume_stored_bytes", "team", 200),
        ("kvol_volume_head_bytes", "other", 7),
        ("kvol_volume_stored_bytes", "other", 7),
    }
    tracker.forget("u1")
    assert {s.labels["namespace"] for f in tracker.collect() for s in f.samples} == {"other"}


def test_storage_usage_counts_the_head_once_and_every_stored_version(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    repo = Repo.create(store)
    wc = WorkingCopy.create(repo, tmp_path / "copy")
    for i in range(3):
        (wc.root / "ckpt").write_bytes(bytes([i]) * 5000)
        (wc.root / "same").write_bytes(b"x" * 3000)
        (wc.root / "twin").write_bytes(b"x" * 3000)  # the same content: stored once
        wc.commit()
    wc.close(final_commit=False)
    usage = storage_usage(repo)
    assert usage.head_bytes == 5000 + 3000
    assert usage.stored_bytes == 3 * 5000 + 3000
    assert usage.history_bytes == 2 * 5000


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_operator_refuses_a_bad_prune_interval(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", f"--prune-interval={value}"]) == 2
    assert "--prune-interval must be 0 (off) or more seconds" in capsys.readouterr().err
