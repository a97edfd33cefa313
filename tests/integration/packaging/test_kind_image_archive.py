"""hack/kind_image_archive.py: several images in one archive that kind's node-image builder
reads whole (it stops at the first ``repositories`` or ``manifest.json`` member and, of a
``manifest.json``, reads only the first image's tags), and containerd imports whole."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.tools import REPO

OCI_IMAGE = REPO / "hack" / "oci_image.py"
MERGE = REPO / "hack" / "kind_image_archive.py"


def _image(tmp_path: Path, name: str, ref: str, content: bytes) -> Path:
    rootfs = tmp_path / f"rootfs-{name}"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "tool").write_bytes(content)
    out = tmp_path / f"{name}.tar"
    subprocess.run(
        [sys.executable, str(OCI_IMAGE), "--rootfs", str(rootfs), "--name", ref, "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


def test_every_image_is_named_before_any_other_metadata_and_each_blob_is_kept_once(
    tmp_path: Path,
) -> None:
    refs = [
        "registry.k8s.io/etcd:3.6.6-0",
        "registry.k8s.io/pause:3.10",
        "registry.k8s.io/pause:3.10.1",
    ]
    # The two pause images have the same content: their layer must be stored once.
    archives = [
        _image(tmp_path, "etcd", refs[0], b"etcd"),
        _image(tmp_path, "pause", refs[1], b"pause"),
        _image(tmp_path, "pause2", refs[2], b"pause"),
    ]
    out = tmp_path / "merged.tar"
    result = subprocess.run(
        [sys.executable, str(MERGE), "--out", str(out), *map(str, archives)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == refs

    with tarfile.open(out) as tar:
        names = tar.getnames()
        # kind reads the first of these two it meets: it must be the one naming every image.
        first_meta = next(n for n in names if n in ("repositories", "manifest.json"))
        assert first_meta == "repositories"
        repositories = json.load(tar.extractfile("repositories"))  # type: ignore[arg-type]
        tags = [f"{repo}:{tag}" for repo, by_tag in repositories.items() for tag in by_tag]
        assert sorted(tags) == sorted(refs)

        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        named = [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]]
        assert named == refs
        blobs = [n for n in names if n.startswith("blobs/")]
        assert len(blobs) == len(set(blobs)), "a blob was written twice"
        # Every blob an image needs is in the archive.
        for entry in json.load(tar.extractfile("manifest.json")):  # type: ignore[arg-type]
            assert entry["Config"] in names
            assert all(layer in names for layer in entry["Layers"])
        layers = {
            layer
            for entry in json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
            for layer in entry["Layers"]
        }
        assert len(layers) == 2, "identical pause layers should be one blob"
