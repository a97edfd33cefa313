"""``kvol volume ... -n NAMESPACE`` and the SDK's ``namespace=``: the names the pods of a
Kubernetes namespace use (the operator's catalog scope), in the same store; without it,
the CLI's own names, which never meet a namespace's."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvol import Volume
from kvol.catalog import Catalog
from kvol.errors import InvalidArgument, NotFound
from kvol.repo import Repo
from kvol.store import open_store
from kvol.workcopy import WorkingCopy
from tests.unit.test_cli import Cli, cli, store  # noqa: F401


@pytest.fixture
def pods_volume(store: str, tmp_path: Path) -> Repo:  # noqa: F811
    """``training-data`` of namespace ml, named as the operator names its Volumes, with a
    file a pod's working copy committed."""
    s = open_store(store)
    meta = Catalog.for_namespace(s, "ml").create("training-data", owner="kvol-operator")
    repo = Repo(s, meta.id)
    wc = WorkingCopy.create(repo, tmp_path / "pod", tmp_path / "pod-meta")
    (wc.root / "epoch-1.txt").write_text("weights\n")
    wc.commit()
    wc.close(final_commit=False)
    return repo


def test_ls_with_namespace_reads_the_volume_pods_use(cli: Cli, pods_volume: Repo) -> None:  # noqa: F811
    listed = cli.json("volume", "ls", "-n", "ml", "training-data", "/")
    assert [e["path"] for e in listed] == ["epoch-1.txt"]
    # The option also goes before the command, and in its long form.
    listed = cli.json("volume", "--namespace", "ml", "ls", "training-data")
    assert [e["path"] for e in listed] == ["epoch-1.txt"]
    assert cli.ok("volume", "get", "-n", "ml", "training-data", "epoch-1.txt", "-") == "weights\n"
    names = cli.json("volume", "list", "-n", "ml")
    assert [(v["name"], v["created_by"]) for v in names] == [("training-data", "kvol-operator")]


def test_without_namespace_the_clis_own_names_are_used(cli: Cli, pods_volume: Repo) -> None:  # noqa: F811
    assert "not found" in cli.fails(3, "volume", "ls", "training-data", "/").lower()
    assert cli.json("volume", "list") == []
    # A volume of the same name in the CLI's scope is another volume.
    cli.ok("volume", "create", "training-data")
    assert cli.json("volume", "ls", "training-data", "/") == []
    assert [e["path"] for e in cli.json("volume", "ls", "-n", "ml", "training-data")] == [
        "epoch-1.txt"
    ]


def test_put_with_namespace_reaches_the_pods_volume(
    cli: Cli,  # noqa: F811
    pods_volume: Repo,
    tmp_path: Path,
) -> None:
    (tmp_path / "labels.csv").write_text("a,b\n")
    cli.ok("volume", "put", "-n", "ml", "training-data", str(tmp_path / "labels.csv"), "/")
    assert set(pods_volume.state().files) == {"epoch-1.txt", "labels.csv"}
    # Created with -n, a volume is where that namespace's pods look it up.
    cli.ok("volume", "create", "-n", "ml", "scratch")
    s = open_store(cli.store)
    assert Catalog.for_namespace(s, "ml").names() == ["scratch", "training-data"]
    assert "scratch" not in Catalog(s).names()


def test_sdk_namespace_argument(store: str, pods_volume: Repo) -> None:  # noqa: F811
    vol = Volume.from_name("training-data", namespace="ml", store=store)
    assert [e.path for e in vol.listdir("/")] == ["epoch-1.txt"]
    assert vol.object_id == pods_volume.volume_id
    assert [v.name for v in Volume.objects.list(namespace="ml", store=store)] == ["training-data"]
    with pytest.raises(NotFound):
        Volume.from_name("training-data", store=store).hydrate()
    with pytest.raises(InvalidArgument):
        Volume.from_name("training-data", namespace="../ml", store=store)
