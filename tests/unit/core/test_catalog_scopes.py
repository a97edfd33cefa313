"""Names of the CLI and of Kubernetes namespaces never meet, and the operator adopts only
names it wrote; a volume with damaged metadata never breaks commands on the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.csi.resolver import StaticResolver
from kvol.errors import CorruptData, InvalidArgument, NotFound
from kvol.model import Limits
from kvol.operator.reconcile import ReconcileError, Reconciler
from kvol.operator.resources import VolumeSpec
from kvol.repo import Repo
from kvol.store import FilesystemStore
from kvol.volume import Volume


@pytest.fixture
def store(tmp_path: Path) -> FilesystemStore:
    return FilesystemStore(tmp_path / "store")


def test_a_pod_in_namespace_main_cannot_mount_a_cli_volume(
    store: FilesystemStore, tmp_path: Path
) -> None:
    Volume.create("private", store=store)
    resolver = StaticResolver(f"file://{tmp_path / 'store'}")
    with pytest.raises(NotFound):
        resolver.resolve("private", "main")


def test_the_operator_never_adopts_a_cli_volume_for_namespace_main(
    store: FilesystemStore,
) -> None:
    cli = Volume.create("shared-name", store=store)
    # What the operator does first for a new Volume main/shared-name.
    try:
        adopted = Reconciler._retained_id(store, "main", "shared-name")
    except ReconcileError:
        adopted = None
    assert adopted != cli.object_id


def test_namespace_and_cli_names_are_separate_both_ways(store: FilesystemStore) -> None:
    cli = Catalog(store).create("data")
    ns = Catalog.for_namespace(store, "main").create("data")
    assert cli.id != ns.id
    assert [n for n, _ in Catalog(store).list()] == ["data"]
    assert [n for n, _ in Catalog.for_namespace(store, "main").list()] == ["data"]
    Catalog.for_namespace(store, "main").delete("data")
    assert Catalog(store).lookup("data").id == cli.id
    assert Repo(store, cli.id).exists()


@pytest.mark.parametrize("scope", ["default", "team-a", "ns/main", "_ns/", "_ns/a/b"])
def test_a_scope_is_either_the_cli_one_or_a_namespace(store: FilesystemStore, scope: str) -> None:
    with pytest.raises(InvalidArgument):
        Catalog(store, scope=scope)


def test_a_foreign_name_in_a_namespace_is_not_adopted(store: FilesystemStore) -> None:
    foreign = Catalog.for_namespace(store, "team").create("data")
    with pytest.raises(ReconcileError) as failed:
        Reconciler._retained_id(store, "team", "data")
    assert failed.value.reason == "NameTaken"
    assert not failed.value.retry
    assert foreign.id in failed.value.message


def test_a_name_the_operator_wrote_is_adopted_again(store: FilesystemStore) -> None:
    # What a Volume with reclaimPolicy Retain leaves behind when it is deleted.
    wanted = "0123456789abcdef0123456789abcdef"
    Reconciler._create_in_store(store, "team", "kept", _spec(), wanted)
    assert Reconciler._retained_id(store, "team", "kept") == wanted
    assert Catalog.for_namespace(store, "team").entry("kept").owner is not None


def _spec() -> VolumeSpec:
    return VolumeSpec.parse({})


# -- damaged metadata (one volume never breaks the others) -----------------------------------


def _damage_limits(store: FilesystemStore, volume_id: str) -> None:
    meta = store.root / "volumes" / volume_id / "meta.json"
    data = json.loads(meta.read_bytes())
    data["limits"]["max_files"] = -1
    meta.write_bytes(json.dumps(data).encode())


def test_negative_limits_are_refused_before_anything_is_written(store: FilesystemStore) -> None:
    for field in Limits.FIELDS:
        with pytest.raises(InvalidArgument, match="negative"):
            # The Limits itself, or the create, refuses it: either way nothing is written.
            Volume.create("bad", limits=Limits(**{field: -1}), store=store)
    assert not list(store.list("volumes/"))
    assert Catalog(store).list() == []


def test_a_damaged_volume_is_listed_as_damaged_and_the_others_still_are(
    store: FilesystemStore,
) -> None:
    good = Catalog(store).create("good")
    bad = Catalog(store).create("bad")
    _damage_limits(store, bad.id)
    handles = {v.name: v for v in Volume.list(store=store)}
    assert sorted(handles) == ["bad", "good"]
    assert handles["good"].object_id == good.id
    with pytest.raises(CorruptData):
        handles["bad"].info()
    scanned = {item.name: item for item in Catalog(store).scan()}
    assert scanned["good"].meta == good
    assert scanned["bad"].meta is None and scanned["bad"].volume_id == bad.id
    assert scanned["bad"].problem
    assert [n for n, _ in Catalog(store).list()] == ["good"]


def test_a_damaged_volume_can_be_deleted(store: FilesystemStore) -> None:
    bad = Catalog(store).create("bad")
    _damage_limits(store, bad.id)
    Volume.delete("bad", store=store)
    assert not list(store.list(f"volumes/{bad.id}/"))
    assert not list(store.list("catalog/"))


def test_an_unreadable_name_can_be_deleted(store: FilesystemStore) -> None:
    Catalog(store).create("good")
    (store.root / "catalog" / "main" / "broken").write_bytes(b"not json")
    assert [v.name for v in Volume.list(store=store)] == ["broken", "good"]
    Volume.delete("broken", store=store)
    assert [n for n, _ in Catalog(store).list()] == ["good"]


def test_deleting_a_cli_name_keeps_data_a_namespace_still_names(store: FilesystemStore) -> None:
    # An older operator kept namespace main's names where the CLI keeps its own; once the
    # new one registered the Volume under its namespace, the old name is a stale alias.
    meta = Catalog.for_namespace(store, "main").create("data")
    legacy = store.root / "catalog" / "main" / "data"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps({"id": meta.id, "created": 1.0}))
    Volume.delete("data", store=store)
    assert Catalog.for_namespace(store, "main").lookup("data") == meta
    assert Catalog(store).list() == []
