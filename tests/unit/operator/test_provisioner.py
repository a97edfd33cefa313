"""The Volume and PersistentVolume made for a claim of a kvol StorageClass."""

from __future__ import annotations

from typing import Any

import pytest

from kvol.errors import InvalidArgument
from kvol.operator import provisioner, specs
from kvol.operator.resources import VolumeSpec

CLASS: dict[str, Any] = {
    "metadata": {"name": "kvol"},
    "provisioner": "csi.kvol.dev",
    "reclaimPolicy": "Retain",
    "parameters": {"backend": "s3", "autocommitIntervalSeconds": "0", "version": "1"},
}


def claim(name: str = "data-web-0", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ml", "uid": "uid-1"},
        "spec": {
            "storageClassName": "kvol",
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "5Gi"}},
            **spec,
        },
    }


def test_the_volume_takes_the_class_and_the_claim() -> None:
    volume = provisioner.volume_for_claim(claim(), CLASS)
    assert volume["metadata"]["name"] == "data-web-0"
    assert volume["metadata"]["namespace"] == "ml"
    assert volume["spec"] == {
        "reclaimPolicy": "Retain",
        "accessModes": ["ReadWriteOnce"],
        "size": "5Gi",
        "backend": "s3",
        "version": 1,
        "autocommitIntervalSeconds": 0,
    }
    assert provisioner.claim_of(volume) == ("data-web-0", "uid-1", "kvol")
    assert provisioner.claim_of({"metadata": {"name": "x"}}) is None


@pytest.mark.parametrize(
    ("bad", "storage_class", "message"),
    [
        (claim("x" * 64), CLASS, "longer than 63"),
        (claim(volumeMode="Block"), CLASS, "volumeMode must be Filesystem"),
        (claim(dataSource={"kind": "VolumeSnapshot"}), CLASS, "data source"),
        (claim(), {**CLASS, "parameters": {"version": "two"}}, "must be an integer"),
        (claim(), {**CLASS, "parameters": {"version": "3"}}, "spec.version must be 1 or 2"),
    ],
)
def test_claims_kvol_cannot_serve_are_refused(
    bad: dict[str, Any], storage_class: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        provisioner.volume_for_claim(bad, storage_class)


def test_the_pv_is_bound_to_the_claim_by_uid_and_class() -> None:
    pv = specs.build_pv_spec(
        namespace="ml",
        name="data-web-0",
        volume_id="abc",
        backend="s3",
        spec=VolumeSpec(),
        claim=("data-web-0", "uid-1", "kvol"),
    )
    assert pv["spec"]["claimRef"]["uid"] == "uid-1"
    assert pv["spec"]["storageClassName"] == "kvol"
    assert pv["metadata"]["annotations"] == {"pv.kubernetes.io/provisioned-by": "csi.kvol.dev"}
    plain = specs.build_pv_spec(
        namespace="ml", name="v", volume_id="abc", backend="s3", spec=VolumeSpec()
    )
    assert "uid" not in plain["spec"]["claimRef"] and plain["spec"]["storageClassName"] == ""
