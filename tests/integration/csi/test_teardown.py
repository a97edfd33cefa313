"""Unpublishing stopped halfway (the plugin killed while it removes a copy) loses nothing."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from kvol.catalog import Catalog
from kvol.mounted import ControlMount
from kvol.mounting import mounts_under
from tests.integration.csi.conftest import NAMESPACE
from tests.integration.csi.plugin import Kubelet, Plugin, publications, volume_files
from tests.unit.core.helpers import write

pytestmark = pytest.mark.root


def chattr(flag: str, paths: list[Path]) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True)


@pytest.mark.parametrize("layout", ["plain", "overlay"])
def test_plugin_killed_while_removing_a_copy_never_commits_what_it_removed(
    workdir: Path, store_dir: Path, catalog: Catalog, layout: str
) -> None:
    plugin = Plugin(workdir, f"file://{store_dir}", extra_args=[f"--layout={layout}"])
    plugin.start()
    try:
        kubelet = Kubelet(plugin, workdir / "kubelet")
        pod = kubelet.pod(NAMESPACE)
        kubelet.publish(pod, attributes={"autocommitIntervalSeconds": "0"})
        files = {f"d{i % 6}/sub/f{i}": f"file {i}\n".encode() for i in range(120)}
        for rel, data in files.items():
            write(pod.target, rel, data)
        ControlMount(pod.target).commit("the pod's work")
        repo = catalog.repo("data")
        assert volume_files(repo) == files
        head = repo.head()

        # Stop the removal of the copy partway, deterministically: the directories under
        # the copy's data can be emptied but not removed. Whichever the removal reaches
        # first, it deletes the files below it and then fails, as a kill would stop it.
        [pub] = publications(plugin)
        data_dir = Path(str(pub["workdir"])) / ("root" if layout == "plain" else "upper")
        obstacles = [data_dir / f"d{k}" for k in range(6)]
        chattr("+i", obstacles)
        try:
            with pytest.raises(grpc.RpcError):
                kubelet.unpublish(pod)
            assert any(
                not (d / "sub").exists() or len(list((d / "sub").iterdir())) < 20 for d in obstacles
            ), "the removal did not start"
            plugin.kill()  # a DaemonSet rollout's SIGKILL
        finally:
            chattr("-i", obstacles)

        plugin.start()
        kubelet.unpublish(pod)  # the kubelet retries: it must succeed
        assert volume_files(repo) == files
        assert repo.head() == head  # the half-removed copy was never committed
        assert not Path(str(pub["workdir"])).exists()
        assert not pod.target.exists()
        assert publications(plugin) == []
        assert mounts_under(plugin.state_dir) == []
    finally:
        plugin.stop()


def test_a_retried_unpublish_after_a_failed_removal_commits_nothing(
    workdir: Path, catalog: Catalog, plain_plugin: Plugin
) -> None:
    """The same, without a restart: the plugin that failed to remove the copy must not
    serve or commit it again (no autocommit, no final commit of the retry)."""
    kubelet = Kubelet(plain_plugin, workdir / "kubelet")
    pod = kubelet.pod(NAMESPACE)
    kubelet.publish(pod, attributes={"autocommitIntervalSeconds": "0.2"})
    files = {f"d{i % 4}/sub/f{i}": b"x" * i for i in range(40)}
    for rel, data in files.items():
        write(pod.target, rel, data)
    ControlMount(pod.target).commit()
    repo = catalog.repo("data")
    head = repo.head()
    [pub] = publications(plain_plugin)
    obstacles = [Path(str(pub["workdir"])) / "root" / f"d{k}" for k in range(4)]
    chattr("+i", obstacles)
    try:
        with pytest.raises(grpc.RpcError):
            kubelet.unpublish(pod)
        time.sleep(1)  # several autocommit intervals
        assert repo.head() == head
    finally:
        chattr("-i", obstacles)
    kubelet.unpublish(pod)
    assert volume_files(repo) == files
    assert repo.head() == head
    assert publications(plain_plugin) == []


def test_a_publish_killed_midway_is_redone_on_the_kubelets_retry(
    workdir: Path, catalog: Catalog, plain_plugin: Plugin
) -> None:
    """A copy whose publish never returned was never shown to a pod: a restarted plugin
    removes it, and the retried publish makes a new one, whatever state it was left in."""
    seeded = catalog.repo("data")
    kubelet = Kubelet(plain_plugin, workdir / "kubelet")
    first = kubelet.pod(NAMESPACE)
    kubelet.publish(first, attributes={"autocommitIntervalSeconds": "0"})
    (first.target / "seed").write_text("committed")
    kubelet.unpublish(first)

    pod = kubelet.pod(NAMESPACE)
    kubelet.publish(pod, attributes={"autocommitIntervalSeconds": "0"})
    plain_plugin.kill()
    # What a kill while the copy was being made leaves: the record of a publish in
    # progress and a copy without its index (files downloaded, never finished).
    state_path = plain_plugin.state_dir / "state.json"
    state = json.loads(state_path.read_text())
    [pub] = state["publications"]
    pub["phase"] = "publishing"
    state_path.write_text(json.dumps(state))
    (Path(pub["workdir"]) / "meta" / "index").unlink()

    plain_plugin.start()
    kubelet.publish(pod, attributes={"autocommitIntervalSeconds": "0"})  # retried
    assert (pod.target / "seed").read_text() == "committed"
    (pod.target / "new").write_text("new")
    kubelet.unpublish(pod)
    assert volume_files(seeded) == {"seed": b"committed", "new": b"new"}
    assert publications(plain_plugin) == []
    assert mounts_under(plain_plugin.state_dir) == []
