"""The node plugin under a pod that tries to starve the others, with a real plugin process
and real mounts."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.control import MAX_CONNECTIONS, MAX_CONNECTIONS_TOTAL, SOCKET_NAME
from kvol.mounted import ControlMount
from tests.integration.csi.conftest import NAMESPACE
from tests.integration.csi.plugin import Kubelet, Plugin, Pod

pytestmark = pytest.mark.root


def connect(target: Path) -> socket.socket:
    """A connection to a mount's control socket that sends nothing (held open)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dir_fd = os.open(target / ".kvol", os.O_PATH | os.O_DIRECTORY)
    try:
        sock.connect(f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
    finally:
        os.close(dir_fd)
    return sock


@contextlib.contextmanager
def held(targets: list[Path], per_target: int) -> Iterator[None]:
    socks = [connect(t) for t in targets for _ in range(per_target)]
    try:
        yield
    finally:
        for s in socks:
            s.close()


def test_a_pod_with_many_mounts_cannot_starve_another_pods_control_socket(
    kubelet: Kubelet,
) -> None:
    greedy = kubelet.pod(NAMESPACE, volume="v0")
    # One pod, many inline volumes of the same kvol volume: one mount (one socket) each.
    mounts = 1 + MAX_CONNECTIONS_TOTAL // MAX_CONNECTIONS
    pods = [greedy]
    for i in range(1, mounts):
        target = greedy.target.parents[1] / f"v{i}" / "mount"
        target.parent.mkdir(parents=True)
        pods.append(
            Pod(greedy.uid, greedy.namespace, greedy.name, target, f"{greedy.volume_id}-{i}")
        )
    for pod in pods:
        kubelet.publish(pod, attributes={"autocommitIntervalSeconds": "0"})
    other = kubelet.pod(NAMESPACE)
    kubelet.publish(other, attributes={"autocommitIntervalSeconds": "0"})

    # Every connection the greedy pod can hold, held idle (each for up to the request
    # timeout, and opened again at once by a real attacker).
    with held([p.target for p in pods], per_target=MAX_CONNECTIONS):
        time.sleep(1.0)  # all accepted (or refused) by the plugin
        status = ControlMount(other.target).status()
    assert status["base_seq"] == 0

    for pod in [*pods, other]:
        kubelet.unpublish(pod)


def test_a_pod_cannot_plant_anything_where_the_plugin_makes_its_socket(
    kubelet: Kubelet, plugin: Plugin
) -> None:
    pod = kubelet.pod(NAMESPACE)
    kubelet.publish(pod, attributes={"autocommitIntervalSeconds": "0"})
    control = pod.target / ".kvol"
    # The plugin (root) sets the mode of the socket it makes there: a symlink swapped in
    # would have it change the mode of any file of the node instead.
    with pytest.raises(OSError) as planted:
        (control / "planted").symlink_to("/etc/shadow")
    assert planted.value.errno == errno.EROFS
    with pytest.raises(OSError) as removed:
        (control / SOCKET_NAME).unlink()
    assert removed.value.errno == errno.EROFS
    assert ControlMount(pod.target).status()["base_seq"] == 0

    # So is the one of a re-adopted publication, after the plugin restarted.
    plugin.kill()
    plugin.start()
    with pytest.raises(OSError) as again:
        (control / "planted").symlink_to("/etc/shadow")
    assert again.value.errno == errno.EROFS
    assert ControlMount(pod.target).status()["base_seq"] == 0
    kubelet.unpublish(pod)


def test_the_plugin_never_opens_a_device_node_a_pod_made_in_a_plain_copy(
    workdir: Path, store_dir: Path, catalog: Catalog
) -> None:
    plugin = Plugin(workdir, f"file://{store_dir}", extra_args=["--layout=plain"])
    plugin.start()
    try:
        kubelet = Kubelet(plugin, workdir / "kubelet")
        pod = kubelet.pod(NAMESPACE)
        kubelet.publish(pod, attributes={"autocommitIntervalSeconds": "0"})
        (pod.target / "kept.txt").write_bytes(b"kept\n")
        # A pod may mknod (containers have CAP_MKNOD), only not open what it made on its
        # nodev mount. The plugin reads the copy as root: a commit's read of a file
        # swapped for a device (a watchdog: the node reboots) must fail the same way.
        os.mknod(pod.target / "dev", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        [pub] = json.loads((plugin.state_dir / "state.json").read_text())["publications"]
        plugins_view = Path(str(pub["workdir"])) / "root" / "dev"
        with pytest.raises(PermissionError):
            os.close(os.open(plugins_view, os.O_RDONLY | os.O_NONBLOCK))
        result = ControlMount(pod.target).commit()
        assert result["seq"] == 1
        kubelet.unpublish(pod)
        assert catalog.repo("data").state().files.keys() == {"kept.txt"}
    finally:
        plugin.stop()
