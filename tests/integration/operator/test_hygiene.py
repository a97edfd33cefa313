"""Operator hygiene against a real kube-apiserver: one acting replica, Events under the
operator's name, names the store can hold, and a short name that means Volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.operator.cluster import Cluster, Operator, wait_for
from tests.integration.operator.helpers import get_volume, volume_yaml, wait_ready

pytestmark = pytest.mark.kube


def _lease(cluster: Cluster, name: str) -> dict[str, Any]:
    found: dict[str, Any] | None = cluster.get_json("lease", "-n", "kvol-system", name)
    return (found or {}).get("spec") or {}


def _reconciled(op: Operator) -> bool:
    return "kvol_operator_reconciles_total{" in op.metrics()


def test_only_the_lease_holder_acts_and_a_standby_takes_over(
    cluster: Cluster, default_store: Path, namespace: str, tmp_path: Path
) -> None:
    lease = f"lease-{namespace}"
    # Both log in with --kubeconfig alone: no $KUBECONFIG in their environment.
    first = Operator(
        cluster, tmp_path / "first", kubeconfig_env=False, leader_elect_lease_name=lease
    )
    second = Operator(
        cluster, tmp_path / "second", kubeconfig_env=False, leader_elect_lease_name=lease
    )
    first.start()
    try:
        holder = wait_for(lambda: _lease(cluster, lease).get("holderIdentity"), 10, "a leader")
        second.start()
        assert f"leading as {holder}" in first.log_tail(200)
        cluster.apply(volume_yaml("one"), namespace)
        wait_ready(cluster, namespace, "one")
        assert _reconciled(first)
        assert not _reconciled(second), "the standby reconciled while the leader held the lease"
        assert "standing by" in second.log_tail(200)
        assert _lease(cluster, lease)["holderIdentity"] == holder

        first.kill()  # no release: the standby waits out the lease, then acts
        cluster.apply(volume_yaml("two"), namespace)
        wait_ready(cluster, namespace, "two", timeout=30)
        taken = _lease(cluster, lease)
        assert taken["holderIdentity"] not in (None, holder)
        assert taken["leaseTransitions"] >= 1
        assert f"leading as {taken['holderIdentity']}" in second.log_tail(200)
        assert _reconciled(second)

        second.stop()  # a clean stop hands the lease over at once
        assert not _lease(cluster, lease).get("holderIdentity")
    finally:
        first.kill()
        second.stop()
        print(f"--- first ---\n{first.log_tail(60)}\n--- second ---\n{second.log_tail(60)}")


def test_events_are_reported_by_kvol_operator(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    cluster.apply(volume_yaml("ev"), namespace)
    wait_ready(cluster, namespace, "ev")

    def posted() -> list[dict[str, Any]] | None:
        found = cluster.get_json(
            "events", "-n", namespace, "--field-selector", "involvedObject.name=ev"
        )
        items: list[dict[str, Any]] = (found or {}).get("items") or []
        return items if any(e["reason"] == "Provisioned" for e in items) else None

    events = wait_for(posted, 10, "the Provisioned event")
    for event in events:
        assert event["source"].get("component") == "kvol-operator", event
        assert event["reportingComponent"] == "kvol-operator", event
    described = cluster.kubectl("describe", "volume", "-n", namespace, "ev").stdout
    shown = described.split("Events:", 1)[1]  # the From column
    assert "kvol-operator" in shown and "kopf" not in shown, described


def test_names_the_store_cannot_hold_are_refused_at_apply(cluster: Cluster, namespace: str) -> None:
    longest, too_long = "a" * 63, "a" * 64
    result = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=volume_yaml(too_long), check=False
    )
    assert result.returncode != 0
    assert "metadata.name" in result.stderr, result.stderr
    assert "must be at most 63 characters" in result.stderr, result.stderr
    assert get_volume(cluster, namespace, too_long) is None
    cluster.apply(volume_yaml(longest), namespace)
    assert get_volume(cluster, namespace, longest) is not None


def test_kvol_short_name_means_volumes_only(
    cluster: Cluster, default_store: Path, namespace: str
) -> None:
    cluster.apply(volume_yaml("short"), namespace)
    names = cluster.kubectl("get", "kvol", "-n", namespace, "-o", "name").stdout.split()
    assert names == ["volume.kvol.dev/short"], names
    # The fully qualified names reach it whatever other Volume kinds a cluster has.
    for resource in ("volumes.kvol.dev", "volumes.v1alpha1.kvol.dev"):
        found = cluster.kubectl("get", resource, "-n", namespace, "-o", "name").stdout.split()
        assert found == ["volume.kvol.dev/short"], (resource, found)
    # The category lists every kvol resource.
    every = cluster.kubectl("get", "kvol-all", "-n", namespace, "-o", "name").stdout.split()
    assert "volume.kvol.dev/short" in every
    assert "volumebackend.kvol.dev/local" in every
