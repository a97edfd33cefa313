"""Pack a root filesystem directory as a one-layer OCI image archive (no registry, no docker).

The archive is an OCI image layout in a tar (``oci-layout``, ``index.json``, ``blobs/``) that
``ctr images import`` reads; the image's name travels in the index annotations. The layer is
written deterministically (sorted entries, fixed times, root owner), so the same tree always
gives the same image digest and an unchanged image is not imported twice.

Usage: python3 hack/oci_image.py --rootfs DIR --name REF --out FILE.tar
                                  [--entrypoint JSON] [--cmd JSON] [--env K=V]... [--workdir D]
Prints the image's manifest digest.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

EPOCH = 0


def _layer(rootfs: Path, out: Path) -> tuple[str, str, int]:
    """Write the layer tar of ``rootfs`` to ``out``; return (digest, diff_id, size)."""

    def entries() -> list[Path]:
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            base = Path(dirpath)
            found.extend(base / d for d in dirnames)
            found.extend(base / f for f in sorted(filenames))
        return found

    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in entries():
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(rootfs)))
            info.mtime = EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    digest = hashlib.sha256()
    with open(out, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    # Uncompressed: the blob's digest is also the layer's diff id.
    value = "sha256:" + digest.hexdigest()
    return value, value, out.stat().st_size


def _blob(tar: tarfile.TarFile, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest.split(":", 1)[1])
    info.size = len(data)
    info.mtime = EPOCH
    tar.addfile(info, io.BytesIO(data))
    return digest, len(data)


def build(args: argparse.Namespace) -> str:
    rootfs = Path(args.rootfs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        layer_path = Path(tmp, "layer.tar")
        layer_digest, diff_id, layer_size = _layer(rootfs, layer_path)
        config: dict[str, object] = {
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": {
                "Env": args.env or ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"],
                **({"Entrypoint": json.loads(args.entrypoint)} if args.entrypoint else {}),
                **({"Cmd": json.loads(args.cmd)} if args.cmd else {}),
                **({"WorkingDir": args.workdir} if args.workdir else {}),
                "Labels": {"org.opencontainers.image.ref.name": args.name},
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "hack/oci_image.py"}],
        }
        staged = Path(tmp, "image.tar")
        with tarfile.open(staged, "w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("blobs/sha256/" + layer_digest.split(":", 1)[1])
            info.size = layer_size
            info.mtime = EPOCH
            with open(layer_path, "rb") as f:
                tar.addfile(info, f)
            config_digest, config_size = _blob(tar, json.dumps(config, sort_keys=True).encode())
            manifest = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": config_size,
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest,
                        "size": layer_size,
                    }
                ],
            }
            manifest_digest, manifest_size = _blob(
                tar, json.dumps(manifest, sort_keys=True).encode()
            )
            index = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": manifest_digest,
                        "size": manifest_size,
                        "platform": {"architecture": "amd64", "os": "linux"},
                        "annotations": {
                            "io.containerd.image.name": args.name,
                            "org.opencontainers.image.ref.name": args.name.rsplit(":", 1)[-1],
                        },
                    }
                ],
            }
            for name, data in (
                ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
                ("index.json", json.dumps(index, sort_keys=True).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = EPOCH
                tar.addfile(info, io.BytesIO(data))
        os.replace(staged, out)
    return manifest_digest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rootfs", required=True)
    p.add_argument("--name", required=True, help="full image reference, e.g. kvol.test/busybox:1")
    p.add_argument("--out", required=True)
    p.add_argument("--entrypoint", help="JSON list")
    p.add_argument("--cmd", help="JSON list")
    p.add_argument("--env", action="append", help="K=V (repeatable; replaces the default PATH)")
    p.add_argument("--workdir")
    print(build(p.parse_args()))


if __name__ == "__main__":
    main()
