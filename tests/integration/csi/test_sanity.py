"""The upstream csi-sanity suite (kubernetes-csi/csi-test, built by
hack/install-csi-sanity.sh) against the plugin's socket.

kvol's plugin is node-only: volumes are created by the operator or the CLI, never by a
CSI provisioner, so it advertises no Controller service. The specs skipped below are the
ones that cannot apply to such a plugin, each with its reason; every other spec runs.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.store import FilesystemStore
from tests.integration.csi.plugin import Plugin
from tests.tools import tool

pytestmark = [pytest.mark.sanity, pytest.mark.root]

#: Spec name pattern -> why it does not apply. Joined into one --ginkgo.skip expression.
SKIPPED = {
    # Every spec of these describes calls the Controller service (CreateVolume, snapshots,
    # ControllerPublish, expansion, health, ListVolumes) without first asking whether the
    # plugin has one. A node-only plugin does not serve it and says so in
    # GetPluginCapabilities. (The GroupController specs skip themselves on that answer.)
    r"\[Controller Server\]": "Controller service specs; the plugin is node-only",
    # These Node specs create their volume with CreateVolume, whatever the plugin's
    # capabilities say. What they check is covered with real volumes in test_kubelet.py:
    # the target path is removed on unpublish (test_two_pods_of_one_volume_keep_every_write)
    # and stats of an unknown path are NOT_FOUND (test_volume_stats_report_bytes_and_inodes).
    r"should remove target path": "needs CreateVolume (Controller service)",
    r"should fail when volume does not exist on the specified path": (
        "needs CreateVolume (Controller service)"
    ),
}


def test_csi_sanity_passes(tmp_path: Path) -> None:
    binary = tool("csi-sanity", "install-csi-sanity.sh")
    store_dir = tmp_path / "store"
    Catalog.for_namespace(FilesystemStore(store_dir), "default").create("data")
    plugin = Plugin(tmp_path, f"file://{store_dir}")
    plugin.start()
    mountdir = tmp_path / "sanity"
    mountdir.mkdir()  # csi-sanity makes the target and staging directories inside it
    try:
        result = subprocess.run(
            [
                binary,
                f"--csi.endpoint=unix://{plugin.socket}",
                f"--csi.mountdir={mountdir / 'target'}",
                f"--csi.stagingdir={mountdir / 'staging'}",
                f"--ginkgo.skip={'|'.join(SKIPPED)}",
                "--ginkgo.no-color",
                "--ginkgo.v",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        plugin.stop()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = re.search(r"Ran (\d+) of (\d+) Specs", output)
    assert summary, output
    ran = int(summary.group(1))
    passed = re.search(r"(\d+) Passed \| (\d+) Failed", output)
    assert passed and passed.group(2) == "0", output
    # Identity (3), NodeGetCapabilities, NodeGetInfo, the publish/unpublish/stats argument
    # checks: if fewer ran, a skip pattern is hiding specs it should not.
    assert ran >= 13, output
    log = plugin.log_path.read_text()
    assert "NodeGetCapabilities" in log
