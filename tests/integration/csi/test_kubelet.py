"""The node plugin driven as the kubelet drives it, with real bind and overlay mounts."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

from kvol import errors
from kvol.catalog import Catalog
from kvol.mounted import ControlMount
from kvol.mounting import is_mountpoint, mounts_under
from kvol.store import FilesystemStore
from tests.integration.csi.conftest import NAMESPACE
from tests.integration.csi.plugin import Kubelet, Plugin, publications, volume_files
from tests.minio import MinioServer, free_port

pytestmark = pytest.mark.root


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        assert callable(call)
        call()
    code: grpc.StatusCode = info.value.code()
    return code


def test_two_pods_of_one_volume_keep_every_write(
    plugin: Plugin, kubelet: Kubelet, catalog: Catalog
) -> None:
    repo = catalog.repo("data")
    one, two = kubelet.pod(NAMESPACE), kubelet.pod(NAMESPACE)
    kubelet.publish(one)
    kubelet.publish(two)
    assert is_mountpoint(one.target) and is_mountpoint(two.target)
    # Both pods sit on one shared snapshot of the volume.
    lowers = {p["lower"] for p in publications(plugin)}
    assert len(lowers) == 1 and None not in lowers

    (one.target / "from-one.txt").write_text("one")
    (one.target / "dir").mkdir()
    (one.target / "dir/nested.bin").write_bytes(os.urandom(300_000))
    (two.target / "from-two.txt").write_text("two")
    (one.target / "shared.txt").write_text("one was here")
    (two.target / "shared.txt").write_text("two was here")
    # Still open for writing when the pod ends: the kubelet stops (kills) the container
    # before unpublishing; what it wrote and never closed is committed all the same.
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "f = open(sys.argv[1], 'w'); f.write('written, never closed\\n'); f.flush()\n"
            "print('ready', flush=True); time.sleep(600)",
            str(two.target / "held-open.log"),
        ],
        stdout=subprocess.PIPE,
    )
    assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
    writer.kill()
    writer.wait()

    kubelet.unpublish(one)
    kubelet.unpublish(two)

    files = volume_files(repo)
    assert files["from-one.txt"] == b"one"
    assert files["from-two.txt"] == b"two"
    assert len(files["dir/nested.bin"]) == 300_000
    assert files["shared.txt"] == b"two was here"  # committed last: the last write wins
    assert files["held-open.log"] == b"written, never closed\n"
    for pod in (one, two):
        assert not pod.target.exists()  # the plugin removes the target it made
    assert mounts_under(plugin.state_dir) == []
    # No mount uses the snapshot: it is only kept warm (read-only) for the next pod.
    assert len(list((plugin.state_dir / "lowers").rglob("tree"))) == 1
    assert publications(plugin) == []


def test_a_pod_may_only_mount_volumes_of_its_namespace(
    plugin: Plugin, kubelet: Kubelet, catalog: Catalog
) -> None:
    intruder = kubelet.pod("team-b")
    asked = code_of(lambda: kubelet.publish(intruder, attributes={"namespace": NAMESPACE}))
    assert asked is grpc.StatusCode.PERMISSION_DENIED
    # Without naming the namespace, its own namespace has no such volume.
    assert code_of(lambda: kubelet.publish(intruder)) is grpc.StatusCode.NOT_FOUND
    assert not is_mountpoint(intruder.target)
    assert not intruder.target.exists()
    assert publications(plugin) == []


def test_publish_and_unpublish_are_idempotent(
    plugin: Plugin, kubelet: Kubelet, catalog: Catalog
) -> None:
    pod = kubelet.pod(NAMESPACE)
    kubelet.publish(pod)
    kubelet.publish(pod)  # the kubelet retries: same answer, nothing new
    other = kubelet.pod(NAMESPACE)
    other.target = pod.target
    assert code_of(lambda: kubelet.publish(other)) is grpc.StatusCode.ALREADY_EXISTS
    assert code_of(lambda: kubelet.publish(pod, readonly=True)) is grpc.StatusCode.ALREADY_EXISTS
    (pod.target / "f").write_text("x")
    kubelet.unpublish(pod)
    kubelet.unpublish(pod)
    assert volume_files(catalog.repo("data")) == {"f": b"x"}


def test_control_socket_commit_reload_status(
    plugin: Plugin, kubelet: Kubelet, catalog: Catalog
) -> None:
    writer, reader = kubelet.pod(NAMESPACE), kubelet.pod(NAMESPACE)
    kubelet.publish(writer, attributes={"autocommitIntervalSeconds": "0"})
    kubelet.publish(reader, attributes={"autocommitIntervalSeconds": "0"})
    w, r = ControlMount(writer.target), ControlMount(reader.target)
    status = w.status()
    assert status["volume"] == "data" and status["namespace"] == NAMESPACE
    assert status["base_seq"] == 0

    (writer.target / "result.txt").write_text("42")
    assert w.status()["changed"] == ["result.txt"]
    committed = w.commit("from the pod")
    assert committed["seq"] == 1 and committed["files"] == 1
    assert not (reader.target / "result.txt").exists()
    reloaded = r.reload()
    assert reloaded["to_seq"] == 1
    assert (reader.target / "result.txt").read_text() == "42"
    assert r.status()["base_seq"] == 1  # each mount reports the commit it is based on
    # The socket is the plugin's, not the volume's: never committed.
    assert ".kvol" not in {p.split("/")[0] for p in catalog.repo("data").state().all_dirs()}

    # Reload is refused while a process of the pod holds a file in the copy.
    held = open(reader.target / "result.txt")  # noqa: SIM115
    try:
        (writer.target / "result.txt").write_text("43")
        w.commit()
        with pytest.raises(errors.VolumeBusy) as busy:
            r.reload()
        assert any(pid == os.getpid() for pid, _, _ in busy.value.holders)
    finally:
        held.close()
    assert r.reload()["to_seq"] == 2
    for pod in (writer, reader):
        kubelet.unpublish(pod)


def test_read_only_sub_path_mount(plugin: Plugin, kubelet: Kubelet, catalog: Catalog) -> None:
    seeder = kubelet.pod(NAMESPACE)
    kubelet.publish(seeder)
    (seeder.target / "models").mkdir()
    (seeder.target / "models/m.bin").write_bytes(b"weights")
    (seeder.target / "other.txt").write_text("not in the sub path")
    kubelet.unpublish(seeder)

    pod = kubelet.pod(NAMESPACE)
    kubelet.publish(pod, readonly=True, attributes={"subPath": "models"})
    assert (pod.target / "m.bin").read_bytes() == b"weights"
    assert not (pod.target / "other.txt").exists()
    with pytest.raises(OSError) as denied:
        (pod.target / "new").write_text("x")
    assert denied.value.errno == errno.EROFS
    control = ControlMount(pod.target)
    assert control.status()["read_only"] is True
    with pytest.raises(errors.ReadOnly):
        control.commit()
    kubelet.unpublish(pod)
    assert volume_files(catalog.repo("data")).keys() == {"models/m.bin", "other.txt"}


def test_volume_stats_report_bytes_and_inodes(
    plugin: Plugin, kubelet: Kubelet, catalog: Catalog
) -> None:
    pod = kubelet.pod(NAMESPACE)
    kubelet.publish(pod)
    (pod.target / "a").write_bytes(b"x" * 1000)
    (pod.target / "d").mkdir()
    (pod.target / "d/b").write_bytes(b"y" * 500)
    ControlMount(pod.target).commit()
    usage = {u.unit: u for u in kubelet.stats(pod).usage}
    from kvol.csi.proto import csi_pb2

    assert usage[csi_pb2.VolumeUsage.BYTES].used == 1500
    assert usage[csi_pb2.VolumeUsage.BYTES].total >= usage[csi_pb2.VolumeUsage.BYTES].available
    assert usage[csi_pb2.VolumeUsage.INODES].used == 3  # two files, one directory
    stranger = kubelet.pod(NAMESPACE)
    assert code_of(lambda: kubelet.stats(stranger)) is grpc.StatusCode.NOT_FOUND
    kubelet.unpublish(pod)


def test_killed_plugin_readopts_and_commits_on_unpublish(
    plugin: Plugin, kubelet: Kubelet, catalog: Catalog
) -> None:
    pod = kubelet.pod(NAMESPACE)
    kubelet.publish(pod, attributes={"autocommitIntervalSeconds": "3600"})
    (pod.target / "before-crash").write_text("1")
    plugin.kill()
    # The pod keeps running and writing while the plugin is down: its mount is in place.
    assert is_mountpoint(pod.target)
    (pod.target / "while-down").write_text("2")
    plugin.start()
    status = ControlMount(pod.target).status()  # a new control socket, same working copy
    assert set(status["changed"]) == {"before-crash", "while-down"}
    (pod.target / "after-restart").write_text("3")
    kubelet.unpublish(pod)
    assert volume_files(catalog.repo("data")) == {
        "before-crash": b"1",
        "while-down": b"2",
        "after-restart": b"3",
    }
    assert mounts_under(plugin.state_dir) == []


def test_autocommit_publishes_in_the_background(
    plugin: Plugin, kubelet: Kubelet, catalog: Catalog
) -> None:
    pod = kubelet.pod(NAMESPACE)
    kubelet.publish(pod, attributes={"autocommitIntervalSeconds": "0.2"})
    (pod.target / "auto").write_text("a")
    repo = catalog.repo("data")
    import time

    deadline = time.monotonic() + 20
    while "auto" not in repo.state().files:
        assert time.monotonic() < deadline, "autocommit did not publish"
        time.sleep(0.1)
    kubelet.unpublish(pod)


def test_store_down_during_unpublish_keeps_the_data(
    workdir: Path, minio: MinioServer, s3_bucket: str
) -> None:
    url = minio.url(s3_bucket, "vols", retries="1", retry_timeout="2", connect_timeout="1")
    store = minio.store(s3_bucket, "vols/")
    Catalog.for_namespace(store, NAMESPACE).create("data")
    plugin = Plugin(workdir, url, env=minio.env)
    plugin.start()
    try:
        kubelet = Kubelet(plugin, workdir / "kubelet")
        pod = kubelet.pod(NAMESPACE)
        kubelet.publish(pod, attributes={"autocommitIntervalSeconds": "3600"})
        (pod.target / "precious").write_text("do not lose me")
        minio.stop()
        try:
            assert code_of(lambda: kubelet.unpublish(pod)) is grpc.StatusCode.UNAVAILABLE
            # Nothing was torn down: the kubelet will retry, the data is where it was.
            assert is_mountpoint(pod.target)
            assert (pod.target / "precious").read_text() == "do not lose me"
        finally:
            minio.start()
        kubelet.unpublish(pod)
        assert not pod.target.exists()
        repo = Catalog.for_namespace(store, NAMESPACE).repo("data")
        assert volume_files(repo) == {"precious": b"do not lose me"}
    finally:
        plugin.stop()


def test_metrics_port_exports_csi_and_kvol_metrics(
    workdir: Path, store_dir: Path, catalog: Catalog
) -> None:
    port = free_port()
    plugin = Plugin(
        workdir,
        f"file://{store_dir}",
        extra_args=[f"--metrics-port={port}", "--metrics-address=127.0.0.1"],
    )
    plugin.start()
    try:
        kubelet = Kubelet(plugin, workdir / "kubelet")
        pod = kubelet.pod(NAMESPACE)
        kubelet.publish(pod)
        (pod.target / "m").write_text("m")
        kubelet.unpublish(pod)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        plugin.stop()
    assert (
        'csi_plugin_operations_seconds_count{driver_name="csi.kvol.dev",'
        'grpc_status_code="OK",method_name="/csi.v1.Node/NodePublishVolume"} 1.0'
    ) in text
    assert 'kvol_commits_total{result="published"} 1.0' in text
    assert "kvol_uncommitted_bytes" in text and "kvol_writers" in text
    assert "kvol_store_requests_total" in text
    log = plugin.log_path.read_text()
    assert "NodePublishVolume" in log and "do-not-log-me" not in log


def test_plain_layout_works_too(
    workdir: Path, store_dir: Path, catalog: Catalog, plain_plugin: Plugin
) -> None:
    kubelet = Kubelet(plain_plugin, workdir / "kubelet")
    one, two = kubelet.pod(NAMESPACE), kubelet.pod(NAMESPACE)
    kubelet.publish(one)
    kubelet.publish(two)
    (one.target / "a").write_text("a")
    (two.target / "b").write_text("b")
    kubelet.unpublish(one)
    kubelet.unpublish(two)
    assert volume_files(
        Catalog.for_namespace(FilesystemStore(store_dir), NAMESPACE).repo("data")
    ) == {
        "a": b"a",
        "b": b"b",
    }
