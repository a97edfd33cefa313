"""Code written for ``modal.Volume``, running on kvol: only the import differs.

On Modal this file starts with ``import modal``; here it is ``import kvol as modal``.
Everything below that line is Modal's API as Modal documents it (``Volume.objects``,
``batch_upload``, ``listdir``, ``read_file``, positional ``recursive`` and ``force``, a
reload refused with ``RuntimeError`` while a file is open). docs/migrating-from-modal.md
lists what differs.

Two parts, as in a Modal app:

* ``python examples/modal_volume.py`` is the local part (Modal's ``local_entrypoint``):
  it creates the volume and works on it through the SDK. The store is ``$KVOL_STORE``.
* ``python examples/modal_volume.py container`` is the part that runs where the volume
  is mounted (Modal's ``@app.function(volumes={"/data": vol})``): at ``$EXAMPLE_MOUNT``
  (default ``/data``), made by a pod's volume or by ``kvol volume mount``.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

import kvol as modal  # on Modal: import modal

VOLUME = "modal-example"
MOUNT = Path(os.environ.get("EXAMPLE_MOUNT", "/data"))


def local_part() -> None:
    modal.Volume.objects.create(VOLUME, allow_existing=True)
    vol = modal.Volume.from_name(VOLUME)

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        (local / "config.json").write_text('{"lr": 0.001}\n')
        (local / "dataset" / "train").mkdir(parents=True)
        (local / "dataset" / "train" / "part-0.csv").write_text("x,y\n1,2\n")
        (local / "dataset" / "labels.txt").write_text("cat\ndog\n")

        # One batch, published at once when the block ends. force=True, positionally.
        with vol.batch_upload(True) as batch:
            batch.put_file(local / "config.json", "/config.json")
            batch.put_file(io.BytesIO(b"hello from memory\n"), "/hello.txt")
            batch.put_directory(local / "dataset", "/dataset")

    print("root:", sorted(entry.path for entry in vol.listdir("/")))
    print("config:", b"".join(vol.read_file("config.json")).decode().strip())

    # Directories need recursive=True, which Modal's code passes positionally.
    vol.copy_files(["/dataset"], "/backup", True)
    vol.remove_file("/dataset", True)

    for entry in vol.listdir("/backup", recursive=True):
        kind = "dir" if entry.type == modal.FileEntryType.DIRECTORY else "file"
        print(f"backup: {kind} {entry.path}")

    names = [v.name for v in modal.Volume.objects.list()]
    print("volume listed:", VOLUME in names)
    print("created at:", vol.info().created_at.isoformat(timespec="seconds"))


def container_part() -> None:
    vol = modal.Volume.from_name(VOLUME)

    # Another writer publishes while this container works.
    with vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"published elsewhere\n"), "/news.txt")

    # A reload swaps files under the mount: not while this process holds one open.
    with open(MOUNT / "config.json", "rb"):
        try:
            vol.reload()
            print("reload: went through with a file open")
        except RuntimeError as exc:
            print("reload refused while a file is open:", type(exc).__name__)

    vol.reload()
    print("after reload:", (MOUNT / "news.txt").read_text().strip())

    (MOUNT / "results.txt").write_text("done\n")
    vol.commit()
    print("committed:", [e.path for e in vol.listdir("/") if e.path == "results.txt"])


if __name__ == "__main__":
    if sys.argv[1:] == ["container"]:
        container_part()
    else:
        local_part()
