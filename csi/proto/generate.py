"""Generate the CSI message and service modules from ``csi.proto`` with grpcio-tools.

Runs at install time (``setup.py``'s ``build_py``) and, as a fallback, on the first
import of :mod:`kvol.csi.proto` in a checkout where the install step did not run. It
imports nothing from kvol, so the build can load it by path before kvol is installed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

PROTO = Path(__file__).resolve().with_name("csi.proto")
#: Where the modules live once installed; protoc derives the generated imports from it.
PACKAGE_PATH = ("kvol", "csi", "proto")
OUTPUTS = ("csi_pb2.py", "csi_pb2.pyi", "csi_pb2_grpc.py")


def generate(out_dir: Path | str, proto: Path | str = PROTO) -> list[Path]:
    """Write ``csi_pb2.py``, ``csi_pb2.pyi`` and ``csi_pb2_grpc.py`` into ``out_dir``."""
    from grpc_tools import protoc  # build-time dependency only

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kvol-protoc-") as tmp:
        # Lay the file out as its installed module path so the generated service module
        # imports "kvol.csi.proto.csi_pb2" rather than a top-level "csi_pb2".
        src_root = Path(tmp, "src")
        nested = src_root.joinpath(*PACKAGE_PATH)
        nested.mkdir(parents=True)
        shutil.copyfile(proto, nested / "csi.proto")
        gen_root = Path(tmp, "gen")
        gen_root.mkdir()
        well_known = Path(protoc.__file__).resolve().parent / "_proto"
        rel = "/".join((*PACKAGE_PATH, "csi.proto"))
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{src_root}",
                f"-I{well_known}",
                f"--python_out={gen_root}",
                f"--pyi_out={gen_root}",
                f"--grpc_python_out={gen_root}",
                rel,
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code} on {proto}")
        written = []
        for name in OUTPUTS:
            produced = gen_root.joinpath(*PACKAGE_PATH, name)
            target = out / name
            # Replace atomically: a concurrent importer never sees half a module.
            staged = target.with_name(f".{name}.{os.getpid()}.tmp")
            text = produced.read_text()
            if name != "csi_pb2.py":
                # Generated typing is not mypy --strict clean; its types are still used.
                text = "# mypy: ignore-errors\n" + text
            staged.write_text(text)
            os.replace(staged, target)
            written.append(target)
    return written


def exists(out_dir: Path | str) -> bool:
    """Whether every generated module exists in ``out_dir``."""
    return all((Path(out_dir) / name).exists() for name in OUTPUTS)


def is_current(out_dir: Path | str, proto: Path | str = PROTO) -> bool:
    """Whether every generated module exists and is newer than ``csi.proto``."""
    source_mtime = Path(proto).stat().st_mtime
    for name in OUTPUTS:
        path = Path(out_dir) / name
        if not path.exists() or path.stat().st_mtime < source_mtime:
            return False
    return True


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else str(PROTO.parent)
    for path in generate(target):
        print(path)
