"""A pod's fsGroup (CSI VOLUME_MOUNT_GROUP): its members create, edit and delete files in
the copy-on-write view, with no file changed at publish, and root pods see what they did."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.csi import mounts
from kvol.csi import node as node_module
from kvol.csi.node import NodeConfig, NodeService
from kvol.csi.proto import csi_pb2
from kvol.csi.resolver import StaticResolver
from kvol.errors import InvalidArgument
from kvol.mounting import overlay_supported
from kvol.repo import Repo
from kvol.store import FilesystemStore
from kvol.workcopy import WorkingCopy
from tests.unit.csi.pods import publish as publish_pod
from tests.unit.csi.pods import unpublish

NAMESPACE = "team-a"
GROUP = 1000


def publish(node: NodeService, tmp_path: Path, group: str = "") -> Path:
    return publish_pod(node, tmp_path, NAMESPACE, group=group)


@pytest.fixture(autouse=True)
def _root_with_overlay() -> None:
    if not overlay_supported():
        pytest.fail("mount-group tests need root and overlayfs", pytrace=False)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    """A volume of the namespace with files committed by root: old.txt (0644), gone.txt,
    and sub/kept.txt."""
    store = FilesystemStore(tmp_path / "store")
    meta = Catalog.for_namespace(store, NAMESPACE).create("data")
    repo = Repo(store, meta.id)
    wc = WorkingCopy.create(repo, tmp_path / "seed", tmp_path / "seed-meta")
    (wc.root / "old.txt").write_text("old\n")
    os.chmod(wc.root / "old.txt", 0o644)
    (wc.root / "gone.txt").write_text("gone\n")
    (wc.root / "sub").mkdir()
    (wc.root / "sub" / "kept.txt").write_text("kept\n")
    wc.commit()
    wc.close(final_commit=False)
    yield repo
    mounts.unmount_tree(tmp_path)


@pytest.fixture
def node(tmp_path: Path, repo: Repo) -> NodeService:
    config = NodeConfig("node-1", tmp_path / "state", layout="overlay")
    return NodeService(config, StaticResolver(f"file://{tmp_path / 'store'}", 0))


def as_member(target: Path, script: str) -> subprocess.CompletedProcess[str]:
    """``script`` run in the view by uid 1000 with only group 1000 and no capabilities,
    as a pod under the restricted Pod Security Standard runs."""
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={GROUP}",
            f"--regid={GROUP}",
            f"--groups={GROUP}",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "sh",
            "-ec",
            script,
        ],
        cwd=target,  # entered as root: the test's own directories are root's alone
        capture_output=True,
        text=True,
        check=False,
    )


EDITS = """
echo new > new.txt
chmod 600 new.txt
echo more >> old.txt
rm gone.txt
echo mine > sub/mine.txt
mkdir made
echo deep > made/deep.txt
"""


def test_node_advertises_volume_mount_group(node: NodeService) -> None:
    caps = node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest()).capabilities
    kinds = {c.rpc.type for c in caps}
    assert csi_pb2.NodeServiceCapability.RPC.VOLUME_MOUNT_GROUP in kinds
    assert csi_pb2.NodeServiceCapability.RPC.GET_VOLUME_STATS in kinds


def test_mount_group_member_creates_edits_and_deletes(
    node: NodeService, repo: Repo, tmp_path: Path
) -> None:
    target = publish(node, tmp_path, group=str(GROUP))
    done = as_member(target, EDITS)
    assert done.returncode == 0, done.stderr
    # What the member made belongs to the pod's group (setgid directories).
    assert os.stat(target / "new.txt").st_gid == GROUP
    assert os.stat(target / "made").st_gid == GROUP
    unpublish(node, target)

    state = repo.state()
    assert set(state.files) == {
        "old.txt",
        "new.txt",
        "sub/kept.txt",
        "sub/mine.txt",
        "made/deep.txt",
    }
    assert stat.S_IMODE(state.files["new.txt"].mode) == 0o600
    # Edited in place, old.txt keeps its committed mode: the group bits the view added
    # are not published.
    assert stat.S_IMODE(state.files["old.txt"].mode) == 0o644
    # A root pod (no mount group) sees the results, with the modes the member set.
    reader = publish(node, tmp_path)
    assert (reader / "old.txt").read_text() == "old\nmore\n"
    assert (reader / "made" / "deep.txt").read_text() == "deep\n"
    assert not (reader / "gone.txt").exists()
    assert stat.S_IMODE(os.stat(reader / "new.txt").st_mode) == 0o600
    # Files no member touched keep their committed mode and owner for root pods: the
    # node's cache entries were never changed for the group.
    kept = os.stat(reader / "sub" / "kept.txt")
    assert (stat.S_IMODE(kept.st_mode), kept.st_uid, kept.st_gid) == (0o644, 0, 0)
    unpublish(node, reader)


def test_a_file_a_member_moves_keeps_its_committed_mode(
    node: NodeService, repo: Repo, tmp_path: Path
) -> None:
    # The view shows sub/kept.txt group-writable (0664); moved, it is at a path the
    # volume has no record of, and its mode is still the one it was committed with, as
    # mv keeps it. (It was published as 0664, the view's, for every later pod.)
    target = publish(node, tmp_path, group=str(GROUP))
    done = as_member(target, "mv sub/kept.txt moved.txt\nmv gone.txt sub/gone.txt\n")
    assert done.returncode == 0, done.stderr
    unpublish(node, target)

    state = repo.state()
    assert "sub/kept.txt" not in state.files and "gone.txt" not in state.files
    assert stat.S_IMODE(state.files["moved.txt"].mode) == 0o644
    assert stat.S_IMODE(state.files["sub/gone.txt"].mode) == 0o644


def test_without_a_mount_group_a_non_root_pod_cannot_write(
    node: NodeService, tmp_path: Path
) -> None:
    target = publish(node, tmp_path)
    done = as_member(target, "echo more >> old.txt")
    assert done.returncode != 0
    assert "Permission denied" in done.stderr
    unpublish(node, target)


def test_a_group_snapshot_reuses_the_previous_ones_files(
    node: NodeService, repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = publish(node, tmp_path, group=str(GROUP))
    before = os.stat(keep / "sub" / "kept.txt").st_ino
    # A publish after a commit builds a new snapshot rather than reload into the old one.
    monkeypatch.setattr(node_module, "REUSE_SNAPSHOT_WITHIN", 0)
    writer = WorkingCopy.create(repo, tmp_path / "w", tmp_path / "w-meta")
    (writer.root / "n.txt").write_text("n")
    writer.commit()
    writer.close(final_commit=False)
    later = publish(node, tmp_path, group=str(GROUP))
    assert node._live[str(later)].pub.lower != node._live[str(keep)].pub.lower
    assert os.stat(later / "sub" / "kept.txt").st_ino == before
    assert as_member(later, "echo x >> sub/kept.txt").returncode == 0
    for t in (keep, later):
        unpublish(node, t)


def test_files_and_directories_a_reload_brings_are_writable_by_the_group(
    node: NodeService, repo: Repo, tmp_path: Path
) -> None:
    first = publish(node, tmp_path, group=str(GROUP))  # keeps the group's snapshot
    writer = WorkingCopy.create(repo, tmp_path / "w", tmp_path / "w-meta")
    (writer.root / "fresh").mkdir()
    (writer.root / "fresh" / "new.txt").write_text("new\n")
    writer.commit()
    writer.close(final_commit=False)
    # Published on the same snapshot, the commit after it is reloaded into the view.
    later = publish(node, tmp_path, group=str(GROUP))
    assert node._live[str(later)].pub.lower == node._live[str(first)].pub.lower
    done = as_member(later, "echo more >> fresh/new.txt && echo mine > fresh/mine.txt")
    assert done.returncode == 0, done.stderr
    unpublish(node, later)
    unpublish(node, first)
    state = repo.state()
    assert set(state.files) >= {"fresh/new.txt", "fresh/mine.txt"}
    assert stat.S_IMODE(state.files["fresh/new.txt"].mode) == 0o644


def test_a_mount_group_that_is_not_a_number_is_refused(node: NodeService, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="volume_mount_group"):
        publish(node, tmp_path, group="staff")
