"""The per-volume series the dashboard's volume panels and the alerts read: one series per
Volume however many copies or pods use it, and nothing once it is gone."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

from kvol import metrics
from kvol.catalog import Catalog
from kvol.errors import KvolError
from kvol.operator.metrics import PhaseTracker
from kvol.store import FilesystemStore
from kvol.workcopy import WorkingCopy


def values(families: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def vol(name: str, ns: str = "team", **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"namespace": ns, "volume": name, **more}.items()))


def test_copies_of_one_volume_add_up_to_one_series(tmp_path: Path) -> None:
    copies = [
        metrics.CopySample("team", "data", False, 100, False, 7),
        metrics.CopySample("team", "data", False, 50, True, 9),
        metrics.CopySample("team", "data", True, 0, False, 5),
        metrics.CopySample("other", "data", False, 0, False, 1),
    ]
    node = metrics.NodeCollector()
    node.watch(tmp_path, lambda: copies)
    got = values(list(node.collect()))
    assert got[("kvol_volume_writers", vol("data"))] == 2
    assert got[("kvol_volume_readers", vol("data"))] == 1
    assert got[("kvol_volume_uncommitted_bytes", vol("data"))] == 150
    assert got[("kvol_volume_commit_failing", vol("data"))] == 1
    assert got[("kvol_volume_base_seq", vol("data"))] == 9
    assert got[("kvol_volume_writers", vol("data", "other"))] == 1
    assert len([k for k in got if k[0] == "kvol_volume_writers"]) == 2
    st = os.statvfs(tmp_path)
    size = got[("kvol_node_state_size_bytes", ())]
    assert size == st.f_blocks * st.f_frsize > 0
    assert 0 <= got[("kvol_node_state_avail_bytes", ())] <= size


def test_a_volume_no_copy_uses_has_no_series(tmp_path: Path) -> None:
    copies = [metrics.CopySample("team", "data", False, 0, False, 1)]
    node = metrics.NodeCollector()
    node.watch(tmp_path, lambda: copies)
    copies.clear()
    got = values(list(node.collect()))
    assert not [k for k in got if k[0].startswith("kvol_volume_")]


def test_a_stopped_service_is_not_kept_alive_by_its_metrics(tmp_path: Path) -> None:
    class Service:
        def copies(self) -> list[metrics.CopySample]:
            return [metrics.CopySample("team", "data", False, 0, False, 1)]

    service = Service()
    node = metrics.NodeCollector()
    node.watch(tmp_path, service.copies)
    assert ("kvol_volume_writers", vol("data")) in values(list(node.collect()))
    del service
    gc.collect()
    got = values(list(node.collect()))
    assert not [k for k in got if k[0].startswith("kvol_volume_")]


def test_no_state_directory_no_space_series(tmp_path: Path) -> None:
    node = metrics.NodeCollector()
    node.watch(tmp_path / "missing", lambda: [])
    assert not [f for f in node.collect() if f.name.startswith("kvol_node_state")]


def test_each_volume_has_one_phase_series_until_forgotten() -> None:
    tracker = PhaseTracker()
    tracker.set("uid-1", "Pending", "team", "data")
    tracker.set("uid-2", "Ready", "team", "models")
    tracker.set("uid-1", "Ready", "team", "data")
    got = values(list(tracker.collect()))
    phases = {k: v for k, v in got.items() if k[0] == "kvol_operator_volume_phase"}
    assert phases == {
        ("kvol_operator_volume_phase", vol("data", phase="Ready")): 1,
        ("kvol_operator_volume_phase", vol("models", phase="Ready")): 1,
    }
    assert got[("kvol_operator_volumes", (("phase", "Ready"),))] == 2
    tracker.forget("uid-1")
    got = values(list(tracker.collect()))
    assert [k for k in got if k[0] == "kvol_operator_volume_phase"] == [
        ("kvol_operator_volume_phase", vol("models", phase="Ready"))
    ]


def uncommitted() -> float:
    return REGISTRY.get_sample_value("kvol_uncommitted_bytes") or 0.0


def test_changes_a_failing_commit_leaves_behind_count_as_uncommitted(tmp_path: Path) -> None:
    root = tmp_path / "store"
    catalog = Catalog(FilesystemStore(root))
    catalog.create("vol")
    wc = WorkingCopy.create(catalog.repo("vol"), tmp_path / "wc")
    try:
        before = uncommitted()
        (tmp_path / "wc" / "data").write_bytes(b"x" * 1000)
        # The store is gone (a file stands where its directory was): the commit fails.
        root.rename(tmp_path / "away")
        root.write_text("")
        with pytest.raises(KvolError):
            wc.commit()
        assert uncommitted() - before == 1000
        root.unlink()
        (tmp_path / "away").rename(root)
        wc.commit()
        assert uncommitted() == before
    finally:
        wc.close(final_commit=False)
