"""The operator keeps to its own names: a namespace called ``main`` never reaches the
volumes of the CLI, a name it did not write is never adopted (nor destroyed), and names
it wrote before an upgrade are registered again where the node plugin now looks."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.errors import KvolError
from kvol.repo import Repo
from kvol.store import FilesystemStore
from tests.integration.operator.cluster import Cluster, Operator, wait_for
from tests.integration.operator.helpers import (
    condition,
    get_volume,
    volume_yaml,
    wait_condition,
    wait_gone,
    wait_ready,
    write_files,
)

pytestmark = pytest.mark.kube


def _apply(cluster: Cluster, namespace: str, text: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text)


def test_a_volume_in_namespace_main_never_takes_a_cli_volume(
    cluster: Cluster, operator: Operator, default_store: Path, tmp_path: Path
) -> None:
    store = FilesystemStore(default_store)
    name = f"shared-{secrets.token_hex(3)}"
    cli_id = Catalog(store).create(name).id
    write_files(store, cli_id, tmp_path / "wc", {"private.txt": b"the CLI user's"})
    if cluster.get_json("namespace", "main") is None:
        cluster.kubectl("create", "namespace", "main")
    _apply(cluster, "main", volume_yaml(name, reclaimPolicy="Delete"))
    volume = wait_ready(cluster, "main", name)
    assert volume["status"]["volumeId"] != cli_id
    assert Catalog.for_namespace(store, "main").lookup(name).id == volume["status"]["volumeId"]
    cluster.kubectl("delete", "volume", "-n", "main", name, "--timeout=30s")
    wait_gone(cluster, "volume", "-n", "main", name)
    # The CLI's volume is untouched, name and data.
    assert Catalog(store).lookup(name).id == cli_id
    assert Repo(store, cli_id).stats().files == 1


def test_a_name_the_operator_did_not_write_is_never_adopted(
    cluster: Cluster, operator: Operator, namespace: str, default_store: Path, tmp_path: Path
) -> None:
    store = FilesystemStore(default_store)
    foreign_id = Catalog.for_namespace(store, namespace).create("taken").id
    write_files(store, foreign_id, tmp_path / "wc", {"theirs.txt": b"not the operator's"})
    _apply(cluster, namespace, volume_yaml("taken", reclaimPolicy="Delete"))
    failed = wait_condition(cluster, namespace, "taken", "Ready", "False", "NameTaken")
    assert failed["status"]["phase"] == "Failed"
    assert foreign_id in condition(failed, "Ready")["message"]
    assert not failed["status"].get("volumeId")
    cluster.kubectl("delete", "volume", "-n", namespace, "taken", "--timeout=30s")
    wait_gone(cluster, "volume", "-n", namespace, "taken")
    assert Catalog.for_namespace(store, namespace).lookup("taken").id == foreign_id
    assert Repo(store, foreign_id).stats().files == 1


def test_names_from_before_the_upgrade_are_registered_again(
    cluster: Cluster, default_store: Path, namespace: str, tmp_path: Path
) -> None:
    store = FilesystemStore(default_store)
    op = Operator(cluster, tmp_path / "first")
    op.start()
    try:
        _apply(cluster, namespace, volume_yaml("old"))
        volume_id = wait_ready(cluster, namespace, "old")["status"]["volumeId"]
    finally:
        op.stop()
    # Where an older version kept the name: catalog/<namespace>/<name>, no owner.
    current = default_store / "catalog" / "_ns" / namespace / "old"
    legacy = default_store / "catalog" / namespace / "old"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(f'{{"id": "{volume_id}", "created": 1.0}}')
    current.unlink()
    again = Operator(cluster, tmp_path / "second")
    again.start()
    try:

        def registered() -> bool:
            try:
                return Catalog.for_namespace(store, namespace).lookup("old").id == volume_id
            except KvolError:
                return False

        wait_for(registered, 30, "the Volume to be registered under its namespace again")
        volume = get_volume(cluster, namespace, "old")
        assert volume is not None and volume["status"]["phase"] == "Ready"
    finally:
        again.stop()
