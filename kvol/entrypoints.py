"""The ``kvol-csi`` and ``kvol-operator`` console scripts.

A base install (``pip install kvol``) has both scripts but not what they run on: the node
plugin needs the ``csi`` extra (grpcio, protobuf), the operator the ``operator`` extra
(kopf, kubernetes, PyYAML). Without it, a script prints one line naming the command that
installs the extra and exits with :data:`MISSING_EXTRA`, instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.util import find_spec

#: Exit code of a script whose extra is not installed (sysexits' EX_UNAVAILABLE).
MISSING_EXTRA = 69

_CSI_MODULES = ("grpc", "google.protobuf")
_OPERATOR_MODULES = ("kopf", "kubernetes", "yaml")


def missing_modules(modules: Sequence[str]) -> list[str]:
    """The modules of ``modules`` that cannot be imported here."""
    missing = []
    for name in modules:
        try:
            found = find_spec(name) is not None
        except ImportError:  # a parent package is missing ("google" for google.protobuf)
            found = False
        if not found:
            missing.append(name)
    return missing


def _require(script: str, extra: str, modules: Sequence[str]) -> None:
    missing = missing_modules(modules)
    if missing:
        print(
            f"{script}: needs the '{extra}' extra, which is not installed (no module "
            f"{', '.join(missing)}): pip install 'kvol[{extra}]'",
            file=sys.stderr,
        )
        raise SystemExit(MISSING_EXTRA)


def csi() -> int:
    """``kvol-csi``: the CSI node plugin."""
    _require("kvol-csi", "csi", _CSI_MODULES)
    from kvol.csi.main import main

    return main()


def operator() -> int:
    """``kvol-operator``: the operator, or its CRDs."""
    _require("kvol-operator", "operator", _OPERATOR_MODULES)
    from kvol.operator.main import main

    return main()
