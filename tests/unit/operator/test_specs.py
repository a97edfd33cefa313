"""Pure builders: PV and claim, conditions, status fields, pod usage."""

from __future__ import annotations

from typing import Any

from kvol.operator import specs
from kvol.operator.resources import CSI_DRIVER, VolumeSpec
from kvol.repo import RepoStats

VOLUME_ID = "0123456789abcdef0123456789abcdef"
VOLUME: dict[str, Any] = {
    "apiVersion": "kvol.dev/v1alpha1",
    "kind": "Volume",
    "metadata": {"name": "data", "namespace": "team", "uid": "u-1"},
    "spec": {},
}


def test_pv_is_served_by_the_csi_driver_and_prebound() -> None:
    pv = specs.build_pv_spec(
        namespace="team",
        name="data",
        volume_id=VOLUME_ID,
        backend="local",
        spec=VolumeSpec.parse({"size": "5Gi", "accessModes": ["ReadOnlyMany"]}),
    )
    assert pv["metadata"]["name"] == f"kvol-{VOLUME_ID}"
    csi = pv["spec"]["csi"]
    assert csi["driver"] == CSI_DRIVER == "csi.kvol.dev"
    assert csi["volumeHandle"] == VOLUME_ID
    assert csi["volumeAttributes"] == {"volume": "data", "namespace": "team", "backend": "local"}
    assert pv["spec"]["claimRef"]["namespace"] == "team"
    assert pv["spec"]["claimRef"]["name"] == "data"
    assert pv["spec"]["capacity"] == {"storage": "5Gi"}
    assert pv["spec"]["accessModes"] == ["ReadOnlyMany"]
    # The operator carries out the Volume's policy; Kubernetes must never delete data.
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert pv["spec"]["storageClassName"] == ""


def test_claim_binds_to_the_pv_and_is_owned_by_the_volume() -> None:
    pvc = specs.build_pvc_spec(volume=VOLUME, volume_id=VOLUME_ID, spec=VolumeSpec.parse({}))
    assert pvc["metadata"]["name"] == "data"
    assert pvc["metadata"]["namespace"] == "team"
    assert pvc["spec"]["volumeName"] == f"kvol-{VOLUME_ID}"
    assert pvc["spec"]["storageClassName"] == ""
    assert pvc["spec"]["resources"] == {"requests": {"storage": "1Gi"}}
    (owner,) = pvc["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Volume", "data", "u-1")
    assert pvc["metadata"]["labels"]["kvol.dev/volume"] == "data"


def test_condition_transition_time_moves_only_on_flips() -> None:
    conds, flipped = specs.set_condition(None, "Ready", True, "Provisioned", "ok", now="t1")
    assert flipped and conds[0]["lastTransitionTime"] == "t1"
    conds, flipped = specs.set_condition(conds, "Ready", True, "Provisioned", "again", now="t2")
    assert not flipped and conds[0]["lastTransitionTime"] == "t1"
    assert conds[0]["message"] == "again"
    conds, flipped = specs.set_condition(conds, "Ready", False, "Down", "no", now="t3")
    assert flipped and conds[0] == {
        "type": "Ready",
        "status": "False",
        "reason": "Down",
        "message": "no",
        "lastTransitionTime": "t3",
    }


def test_conditions_keep_others_and_their_order() -> None:
    conds, _ = specs.set_condition(None, "A", True, "r", "m", now="t")
    conds, _ = specs.set_condition(conds, "B", False, "r", "m", now="t", generation=4)
    conds, _ = specs.set_condition(conds, "A", False, "r2", "m2", now="t")
    assert [c["type"] for c in conds] == ["A", "B"]
    assert conds[1]["observedGeneration"] == 4
    assert specs.condition({"conditions": conds}, "A") == conds[0]
    assert specs.condition({"conditions": conds}, "C") is None


def test_stats_status() -> None:
    status = specs.stats_status(RepoStats(3, 5 * 1024 * 1024, 7, 0.0, 2))
    assert status == {
        "files": 3,
        "bytes": 5242880,
        "size": "5.0MiB",
        "headSeq": 7,
        "lastCommitTime": "1970-01-01T00:00:00Z",
        "writers": 2,
        "pods": None,
    }
    assert specs.stats_status(RepoStats(0, 0, 0, None, 0))["lastCommitTime"] is None
    pods = [{"name": "a", "lastCommit": 7, "baseSeq": 7}]
    assert specs.stats_status(RepoStats(3, 0, 7, 0.0, 1), pods)["pods"] == pods


def test_human_bytes() -> None:
    assert [specs.human_bytes(n) for n in (0, 1023, 1024, 3 << 30)] == [
        "0B",
        "1023B",
        "1.0KiB",
        "3.0GiB",
    ]


def _pod(volumes: list[dict[str, Any]], phase: str = "Running") -> dict[str, Any]:
    return {"spec": {"volumes": volumes}, "status": {"phase": phase}}


def test_pod_uses_volume_inline_or_by_claim() -> None:
    inline = {"name": "v", "csi": {"driver": CSI_DRIVER, "volumeAttributes": {"volume": "data"}}}
    claim = {"name": "v", "persistentVolumeClaim": {"claimName": "data"}}
    other = {"name": "v", "csi": {"driver": "other.csi", "volumeAttributes": {"volume": "data"}}}
    assert specs.pod_uses_volume(_pod([inline]), "data")
    assert specs.pod_uses_volume(_pod([claim]), "data")
    assert not specs.pod_uses_volume(_pod([other]), "data")
    assert not specs.pod_uses_volume(_pod([inline]), "logs")
    assert not specs.pod_uses_volume(_pod([claim], phase="Succeeded"), "data")
    assert not specs.pod_uses_volume({"metadata": {}}, "data")
