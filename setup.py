"""Build hook: generate the CSI gRPC modules from csi/proto/csi.proto at install time.

Everything else about the package lives in pyproject.toml. The generated modules are not
committed; a wheel carries them in kvol/csi/proto/, an editable install writes them next
to the .proto in the source tree (where the editable finder looks for kvol.csi.proto).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE / "csi" / "proto"


def _generator() -> ModuleType:
    # Loaded by path: kvol itself is not importable while it is being built.
    spec = importlib.util.spec_from_file_location("_kvol_csi_generate", PROTO_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithProto(build_py):
    """build_py that also runs protoc on the CSI proto."""

    def run(self) -> None:
        super().run()
        generator = _generator()
        out = PROTO_DIR if self.editable_mode else Path(self.build_lib, "kvol", "csi", "proto")
        try:
            generator.generate(out)
        except ImportError:
            # grpcio-tools belongs in [build-system] requires; without it the package
            # still builds, and kvol.csi generates the modules on first import if it can.
            print("warning: grpcio-tools is missing: CSI modules not generated", file=sys.stderr)


setup(cmdclass={"build_py": BuildPyWithProto})
