"""Several worker processes share one volume through their own working copies.

Each worker works in its copy (as a pod works in its mount), writes a result file of its
own and a shared ``latest.txt``, and calls ``Volume.commit()``: the SDK finds the copy
because the worker runs inside it. Every result lands; ``latest.txt`` holds the last
commit's version. Run it with ``python examples/sdk_workers.py``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from kvol import Volume
from kvol.workcopy import WorkingCopy

WORKER = """
import sys
from pathlib import Path
from kvol import Volume

name, store, worker = sys.argv[1:4]
Path(f"results/{worker}.txt").write_text(f"result of worker {worker}\\n")
Path("latest.txt").write_text(f"worker {worker} was here\\n")
result = Volume.from_name(name, store=store).commit(f"worker {worker}")
print(f"worker {worker}: committed {result['files']} files as commit {result['seq']}")
"""


def main(tmp: Path) -> None:
    store = f"file://{tmp / 'store'}"
    vol = Volume.create("results", store=store)
    copies = []
    for worker in range(3):
        copy = tmp / f"worker-{worker}"
        WorkingCopy.create(vol.repo, copy)  # what `kvol volume mount results DIR` does
        (copy / "results").mkdir()
        copies.append(copy)
    for worker, copy in enumerate(copies):
        subprocess.run(
            [sys.executable, "-c", WORKER, "results", store, str(worker)], cwd=copy, check=True
        )

    print("the volume holds:")
    for entry in vol.iterdir("/"):
        if entry.type == "file":
            content = b"".join(vol.read_file(entry.path)).decode().strip()
            print(f"  /{entry.path}: {content}")
    WorkingCopy.open(copies[0]).reload()
    print("worker 0 after reload sees latest.txt:", (copies[0] / "latest.txt").read_text().strip())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
