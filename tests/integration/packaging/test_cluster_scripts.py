"""hack/cluster-up.sh, hack/cluster-down.sh and hack/build-image.sh without a cluster: what
each says when a part is missing, a stop with nothing to stop, and the test images' archives.
The cluster itself is exercised by the e2e tier (tests/e2e)."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.tools import REPO

HACK = REPO / "hack"


def run(
    script: str, tmp_path: Path, *args: str, cache: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KVOL_CACHE": str(cache or tmp_path / "cache"),
        "KVOL_CLUSTER_DIR": str(tmp_path / "cluster"),
        "KVOL_CLUSTER_RUN": str(tmp_path / "run"),
        # A namespace that does not exist: nothing of a real test cluster is touched.
        "KVOL_CLUSTER_NETNS": f"kvol-absent-{os.getpid()}",
    }
    return subprocess.run(
        [str(HACK / script), *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_scripts_are_executable() -> None:
    for name in ("cluster-up.sh", "cluster-down.sh", "build-image.sh"):
        script = HACK / name
        assert os.access(script, os.X_OK), f"hack/{name} is not executable"
        assert script.read_text().startswith("#!/usr/bin/env bash\n")


def test_cluster_up_names_the_script_for_each_missing_part(tmp_path: Path) -> None:
    result = run("cluster-up.sh", tmp_path)
    assert result.returncode == 1
    assert "[cluster-up] error: etcd is missing: run hack/install-etcd.sh" in result.stderr
    bin_dir = tmp_path / "cache" / "bin"
    (bin_dir / "etcd").write_text("#!/bin/sh\n")
    (bin_dir / "etcd").chmod(0o755)
    result = run("cluster-up.sh", tmp_path)
    assert result.returncode == 1
    assert (
        "kube-apiserver is missing: run hack/install-kube.sh kube-apiserver kubectl kubelet "
        "kube-controller-manager kube-scheduler" in result.stderr
    )
    # Nothing was started or mounted.
    assert not (tmp_path / "run" / "pids" / "holder.pid").exists()


def test_cluster_down_with_nothing_up_succeeds_twice(tmp_path: Path) -> None:
    for _ in range(2):
        result = run("cluster-down.sh", tmp_path)
        assert result.returncode == 0, result.stderr
        assert "[cluster-down] cluster down" in result.stderr
    assert not (tmp_path / "run").exists()


def _index(archive: Path) -> Any:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        return json.load(member)


@pytest.mark.timeout(300)
def test_test_images_are_oci_archives_named_for_containerd(tmp_path: Path) -> None:
    result = run("build-image.sh", tmp_path, "--no-import", "busybox", "pause")
    assert result.returncode == 0, result.stderr
    images = tmp_path / "cache" / "images"
    (busybox,) = images.glob("busybox-*.tar")
    (pause,) = images.glob("pause-*.tar")
    index = _index(busybox)
    (manifest,) = index["manifests"]
    assert manifest["annotations"]["io.containerd.image.name"] == "kvol.test/busybox:1"
    assert manifest["platform"] == {"architecture": "amd64", "os": "linux"}
    with tarfile.open(busybox) as tar:
        blobs = {m.name: m for m in tar.getmembers() if m.name.startswith("blobs/")}
        layer = max(blobs.values(), key=lambda m: m.size)
        layer_file = tar.extractfile(layer)
        assert layer_file is not None
        with tarfile.open(fileobj=layer_file) as rootfs:
            names = set(rootfs.getnames())
    assert {"bin/busybox", "bin/sh", "usr/bin/curl"} <= names
    pause_manifest = _index(pause)["manifests"][0]
    assert pause_manifest["annotations"]["io.containerd.image.name"] == "kvol.test/pause:1"
    # Deterministic: the same inputs give the same image, so nothing is imported twice.
    first = manifest["digest"]
    busybox.unlink()
    assert run("build-image.sh", tmp_path, "--no-import", "busybox").returncode == 0
    (again,) = images.glob("busybox-*.tar")
    assert _index(again)["manifests"][0]["digest"] == first


def test_build_image_import_needs_the_cluster(tmp_path: Path) -> None:
    result = run("build-image.sh", tmp_path, "busybox")
    assert result.returncode == 1
    assert "run hack/cluster-up.sh, or pass --no-import" in result.stderr
