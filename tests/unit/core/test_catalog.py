"""Volumes by name through the Catalog, on a real filesystem store."""

from __future__ import annotations

import re

import pytest

from kvol.catalog import Catalog
from kvol.errors import AlreadyExists, InvalidArgument, NotFound, VersionMismatch
from kvol.model import Limits
from kvol.repo import Repo
from tests.unit.core.helpers import CountingStore


def test_create_lookup_list(catalog: Catalog) -> None:
    a = catalog.create("alpha")
    b = catalog.create("beta", version=1)

    assert catalog.lookup("alpha") == a
    assert catalog.lookup("beta") == b
    assert sorted((name, meta.id) for name, meta in catalog.list()) == [
        ("alpha", a.id),
        ("beta", b.id),
    ]
    assert (a.version, b.version) == (2, 1)


def test_ids_are_opaque_and_distinct(catalog: Catalog, store: CountingStore) -> None:
    metas = [catalog.create(f"v{i}") for i in range(5)]
    ids = {m.id for m in metas}
    assert len(ids) == 5
    for meta in metas:
        assert re.fullmatch(r"[0-9a-f]{32}", meta.id)
        assert (store.root / "volumes" / meta.id / "meta.json").is_file()
    # A name appears nowhere in the volume's own data.
    assert not (store.root / "volumes" / "v0").exists()


def test_create_twice_fails_unless_allow_existing(catalog: Catalog) -> None:
    first = catalog.create("vol")
    with pytest.raises(AlreadyExists, match="vol"):
        catalog.create("vol")
    again = catalog.create("vol", allow_existing=True)
    assert again.id == first.id
    assert len(catalog.list()) == 1


def test_allow_existing_with_another_version_is_a_version_mismatch(catalog: Catalog) -> None:
    catalog.create("vol", version=1)
    with pytest.raises(VersionMismatch, match="version 1, not 2"):
        catalog.create("vol", version=2, allow_existing=True)
    assert catalog.lookup("vol").version == 1


def test_version_defaults_are_modals_limits(catalog: Catalog) -> None:
    v1 = catalog.create("one", version=1)
    v2 = catalog.create("two", version=2)
    assert v1.limits == Limits(max_files=500_000)
    assert v2.limits == Limits(max_files_per_directory=32_768, max_file_size=1 << 40)
    assert catalog.create("default").version == 2


def test_explicit_limits_override_the_versions_defaults(catalog: Catalog) -> None:
    meta = catalog.create("vol", version=2, limits=Limits(max_files=10, max_file_size=100))
    assert meta.limits == Limits(max_files=10, max_files_per_directory=32_768, max_file_size=100)
    # Stored with the volume, not only returned.
    assert Repo(catalog.store, meta.id).meta.limits == meta.limits
    assert Catalog(catalog.store).lookup("vol").limits == meta.limits


@pytest.mark.parametrize("version", [0, 3, -1])
def test_unknown_version_is_refused_before_anything_is_written(
    catalog: Catalog, store: CountingStore, version: int
) -> None:
    with pytest.raises(InvalidArgument, match="1 or 2"):
        catalog.create("vol", version=version)
    assert not (store.root / "volumes").exists()
    assert catalog.list() == []


def test_rename_moves_no_data(catalog: Catalog, store: CountingStore) -> None:
    meta = catalog.create("old")
    repo = catalog.repo("old")
    repo.publish([], 0, "something")
    before = sorted(p.relative_to(store.root) for p in (store.root / "volumes").rglob("*"))

    store.reset()
    catalog.rename("old", "new")

    assert catalog.lookup("new").id == meta.id
    with pytest.raises(NotFound):
        catalog.lookup("old")
    after = sorted(p.relative_to(store.root) for p in (store.root / "volumes").rglob("*"))
    assert after == before
    assert not any(k.startswith("volumes/") for op, k in store.keys if op != "get")
    assert catalog.repo("new").head() == 1


def test_rename_onto_an_existing_name_fails_and_keeps_both(catalog: Catalog) -> None:
    a = catalog.create("a")
    b = catalog.create("b")
    with pytest.raises(AlreadyExists):
        catalog.rename("a", "b")
    assert catalog.lookup("a").id == a.id
    assert catalog.lookup("b").id == b.id


def test_rename_of_a_missing_name_is_not_found(catalog: Catalog) -> None:
    with pytest.raises(NotFound):
        catalog.rename("nope", "other")


def test_delete_removes_name_and_data(catalog: Catalog, store: CountingStore) -> None:
    meta = catalog.create("vol")
    catalog.repo("vol").publish([], 0)
    keep = catalog.create("keep")

    catalog.delete("vol")

    with pytest.raises(NotFound):
        catalog.lookup("vol")
    assert not (store.root / "volumes" / meta.id).exists()
    assert [name for name, _ in catalog.list()] == ["keep"]
    assert (store.root / "volumes" / keep.id / "meta.json").is_file()
    # The name is free again, for a new volume.
    assert catalog.create("vol").id != meta.id


def test_delete_missing(catalog: Catalog) -> None:
    with pytest.raises(NotFound):
        catalog.delete("nope")
    catalog.delete("nope", allow_missing=True)


@pytest.mark.parametrize("name", ["", "a/b", "../x", ".hidden", "x" * 64, "sp ace", "a\x00"])
def test_invalid_names_are_refused(catalog: Catalog, name: str) -> None:
    with pytest.raises(InvalidArgument):
        catalog.create(name)


def test_scopes_are_separate(store: CountingStore) -> None:
    main = Catalog(store, scope="main")
    team = Catalog.for_namespace(store, "team-a")
    m = main.create("vol")
    t = team.create("vol")
    assert m.id != t.id
    assert [n for n, _ in team.list()] == ["vol"]
    team.delete("vol")
    assert main.lookup("vol").id == m.id


def test_create_with_a_given_id(catalog: Catalog) -> None:
    wanted = "0123456789abcdef0123456789abcdef"
    assert catalog.create("vol", volume_id=wanted).id == wanted
    with pytest.raises(AlreadyExists, match="another id"):
        catalog.create("vol", volume_id="f" * 32, allow_existing=True)
