"""Deleting a name never destroys a volume that another name, in any scope, still refers
to: not a name the CLI holds for a volume an older operator shared with namespace
``main``, and not when the store cannot say whether another name refers to it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from kvol import errors
from kvol.catalog import Catalog
from kvol.layout import catalog_key
from kvol.operator.reconcile import CATALOG_OWNER, Reconciler
from kvol.repo import Repo
from kvol.store import FilesystemStore
from kvol.volume import Volume
from tests.unit.core.helpers import volume_tree


class FlakyGets(FilesystemStore):
    """A filesystem store whose reads of some keys fail as an unreachable store's do."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.failing: set[str] = set()

    def _get(self, key: str) -> bytes:
        if key in self.failing:
            raise errors.StoreUnavailable(f"{key}: connection reset")
        return super()._get(key)


def put(store: FlakyGets, volume_id: str, path: str, data: bytes) -> None:
    with Volume.from_id(volume_id, store=store).batch_upload() as batch:
        batch.put_file(io.BytesIO(data), path)


@pytest.fixture
def store(tmp_path: Path) -> FlakyGets:
    return FlakyGets(tmp_path / "store")


def cli_volume_shared_with_namespace_main(store: FlakyGets, *, operator_name: bool) -> str:
    """A CLI volume that an older operator adopted for the Volume main/shared (it kept
    namespace main's names in the CLI's scope); after an upgrade the operator writes the
    namespace's own name for the id in its status, as it does for every Volume."""
    cli = Catalog(store).create("shared")
    put(store, cli.id, "notes.txt", b"the CLI user's notes\n")
    if operator_name:
        Catalog.for_namespace(store, "main").create(
            "shared", volume_id=cli.id, allow_existing=True, owner=CATALOG_OWNER
        )
    return cli.id


@pytest.mark.parametrize("operator_name", [True, False], ids=["name-written", "name-not-yet"])
def test_reclaim_delete_in_namespace_main_keeps_a_volume_the_cli_still_names(
    store: FlakyGets, operator_name: bool
) -> None:
    volume_id = cli_volume_shared_with_namespace_main(store, operator_name=operator_name)

    Reconciler._destroy(store, "main", "shared", volume_id)  # reclaimPolicy: Delete

    assert Repo(store, volume_id).exists()
    assert Catalog(store).lookup("shared").id == volume_id
    assert volume_tree(Repo(store, volume_id)) == {"notes.txt": b"the CLI user's notes\n"}
    with pytest.raises(errors.NotFound):
        Catalog.for_namespace(store, "main").entry("shared")


def test_a_namespace_name_deleted_keeps_data_the_cli_scope_names(store: FlakyGets) -> None:
    volume_id = cli_volume_shared_with_namespace_main(store, operator_name=True)
    Catalog.for_namespace(store, "main").delete("shared")
    assert Repo(store, volume_id).exists()


def test_delete_stops_when_the_store_cannot_say_whether_another_name_refers_to_the_data(
    store: FlakyGets,
) -> None:
    catalog = Catalog(store)
    meta = catalog.create("old")
    put(store, meta.id, "f", b"data\n")
    # A rename cut short: two names for one volume.
    assert store.put_if_absent(catalog_key("main", "new"), store.get(catalog_key("main", "old")))
    store.failing.add(catalog_key("main", "new"))

    with pytest.raises(errors.StoreUnavailable):
        catalog.delete("old")

    store.failing.clear()
    assert Repo(store, meta.id).exists()
    assert catalog.lookup("new").id == meta.id


def test_a_damaged_entry_that_still_holds_the_id_keeps_the_data(store: FlakyGets) -> None:
    catalog = Catalog(store)
    meta = catalog.create("a")
    store.put(catalog_key("main", "b"), b'{"id": "' + meta.id.encode() + b'", "created": ')
    catalog.delete("a")
    assert Repo(store, meta.id).exists()
