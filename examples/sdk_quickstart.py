"""kvol's Python SDK in one page: upload, list, read, copy, remove.

Run it with ``python examples/sdk_quickstart.py``; it uses a temporary store unless
``KVOL_STORE`` (or the first argument) names one.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

from kvol import AlreadyExists, Volume


def main(store: str) -> None:
    vol = Volume.from_name("quickstart", create_if_missing=True, store=store)

    # Everything in one batch lands as one commit when the block ends (nothing if it raises).
    with tempfile.TemporaryDirectory() as local:
        (Path(local) / "config.json").write_text('{"lr": 0.001}\n')
        (Path(local) / "data").mkdir()
        (Path(local) / "data" / "train.csv").write_text("x,y\n1,2\n")
        with vol.batch_upload(force=True) as batch:
            batch.put_directory(local, "/inputs")
            batch.put_file(io.BytesIO(b"hello from memory\n"), "/hello.txt")
    print(f"uploaded as commit {batch.seq}")

    # An existing file is never overwritten by accident.
    try:
        with vol.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"oops"), "/hello.txt")
    except AlreadyExists as exc:
        print(f"refused: {exc}")

    for entry in vol.iterdir("/"):
        print(f"  {entry.type:<9} {entry.size:>6}  /{entry.path}")

    print("hello.txt says:", b"".join(vol.read_file("/hello.txt")).decode().strip())

    vol.copy_files(["/inputs/data"], "/backup", recursive=True)  # no data is uploaded again
    vol.remove_file("/inputs/data", recursive=True)
    print("now at the root:", [e.path for e in vol.listdir("/")])
    info = vol.info()
    print(f"{info.name}: {info.files} files, {info.bytes} bytes, head commit {info.head}")


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("KVOL_STORE")
    if target:
        main(target)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(f"file://{tmp}/store")
