"""Merge image archives from hack/oci_image.py into one archive that kind's builder reads.

``kind build node-image`` finds the names of the images in an archive from the first of a
Docker ``repositories`` or ``manifest.json`` member it meets (of ``manifest.json``, only the
first image's tags), and imports the archive with ``ctr images import``, which reads its OCI
``index.json``. The archive written here starts with ``repositories`` naming every image of
every input archive (one OCI image layout in a tar each, its name in the index
annotations), then holds each blob once, ``index.json`` and ``manifest.json``.

Usage: python3 hack/kind_image_archive.py --out FILE.tar ARCHIVE.tar...
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

NAME_ANNOTATION = "io.containerd.image.name"


def _json(tar: tarfile.TarFile, name: str) -> Any:
    member = tar.extractfile(name)
    if member is None:
        raise SystemExit(f"{tar.name!r} has no {name}")
    return json.load(member)


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _add_bytes(out: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))


def merge(archives: list[Path], dest: Path) -> list[str]:
    """Write the merged archive to ``dest``; return the image names it holds."""
    manifests: list[dict[str, Any]] = []
    docker: list[dict[str, Any]] = []
    written: set[str] = set()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The names come first (kind stops reading at them): collect them in a first pass.
    repositories: dict[str, dict[str, str]] = {}
    for archive in archives:
        with tarfile.open(archive) as src:
            for entry in _json(src, "index.json")["manifests"]:
                name = entry.get("annotations", {}).get(NAME_ANNOTATION, "")
                repository, _, tag = name.rpartition(":")
                if not repository or "/" in tag:
                    raise SystemExit(f"{archive}: an image without a tagged {NAME_ANNOTATION}")
                repositories.setdefault(repository, {})[tag] = entry["digest"].split(":", 1)[1]
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as staged:
        staged_path = Path(staged.name)
    try:
        with tarfile.open(staged_path, "w", format=tarfile.PAX_FORMAT) as out:
            _add_bytes(out, "repositories", json.dumps(repositories, sort_keys=True).encode())
            for archive in archives:
                with tarfile.open(archive) as src:
                    index = _json(src, "index.json")
                    for entry in index["manifests"]:
                        name = entry.get("annotations", {}).get(NAME_ANNOTATION)
                        if not name:
                            raise SystemExit(f"{archive}: an image without {NAME_ANNOTATION}")
                        manifest = _json(src, _blob_name(entry["digest"]))
                        digests = [entry["digest"], manifest["config"]["digest"]]
                        digests += [layer["digest"] for layer in manifest["layers"]]
                        for digest in digests:
                            blob = _blob_name(digest)
                            if blob in written:
                                continue
                            info = src.getmember(blob)
                            data = src.extractfile(info)
                            if data is None:
                                raise SystemExit(f"{archive}: {blob} is not a file")
                            out.addfile(info, data)
                            written.add(blob)
                        manifests.append(entry)
                        docker.append(
                            {
                                "Config": _blob_name(manifest["config"]["digest"]),
                                "RepoTags": [name],
                                "Layers": [
                                    _blob_name(layer["digest"]) for layer in manifest["layers"]
                                ],
                            }
                        )
            index_out = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": manifests,
            }
            _add_bytes(out, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
            _add_bytes(out, "index.json", json.dumps(index_out, sort_keys=True).encode())
            _add_bytes(out, "manifest.json", json.dumps(docker, sort_keys=True).encode())
        os.replace(staged_path, dest)
    except BaseException:
        staged_path.unlink(missing_ok=True)
        raise
    return [tag for image in docker for tag in image["RepoTags"]]


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("archives", nargs="+", type=Path)
    args = p.parse_args()
    for name in merge(args.archives, Path(args.out)):
        print(name)


if __name__ == "__main__":
    main()
