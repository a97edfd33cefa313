"""CSI v1 messages and services, generated from ``csi.proto`` by grpcio-tools.

The install step generates them (setup.py). In a checkout where it did not run, the first
import generates them here; after an edit of ``csi.proto`` it regenerates them when it can.
"""

from __future__ import annotations

from pathlib import Path

from kvol.csi.proto import generate as _generate

_HERE = Path(__file__).resolve().parent

if not _generate.is_current(_HERE):  # pragma: no cover - only in fresh or edited checkouts
    try:
        _generate.generate(_HERE)
    except (ImportError, OSError, RuntimeError) as exc:
        if not _generate.exists(_HERE):
            raise ImportError(
                f"the CSI modules are missing from {_HERE} and could not be generated "
                f"({exc}); reinstall kvol with grpcio-tools available"
            ) from exc
        # Present but older than csi.proto (a read-only install): use them as they are.
