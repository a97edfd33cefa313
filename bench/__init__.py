"""kvol benchmarks: opt-in, JSON output, every figure beside a baseline from the same run.

``python -m bench`` runs every scenario it finds (see bench/README.md). Other code runs
the core scenarios against any store with :func:`run_core_scenarios`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import (
    Context,
    Measurement,
    Result,
    Scenario,
    Sizes,
    Target,
    discover,
    run_scenario,
    select,
)

__all__ = [
    "Context",
    "Measurement",
    "Result",
    "Scenario",
    "Sizes",
    "Target",
    "core_scenarios",
    "discover",
    "run_core_scenarios",
]


def core_scenarios() -> list[Scenario]:
    """The core's scenarios (``core.*``), each runnable against any store URL."""
    from bench import core_commit, core_reload

    return [*core_commit.SCENARIOS, *core_reload.SCENARIOS]


def run_core_scenarios(
    store_url: str,
    sizes: Sizes | None = None,
    *,
    only: Sequence[str] | None = None,
    workdir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Run the core scenarios against ``store_url`` (``file://...``, ``s3://...``).

    Each scenario creates a volume of its own in the store and destroys it afterwards;
    local files go to a temporary directory under ``workdir`` (default: the system's
    temporary directory), removed afterwards. Returns one JSON-ready dict per result, as
    ``python -m bench`` prints them; a scenario that fails gives a dict with ``error``.
    """
    sizes = sizes or Sizes.full()
    with tempfile.TemporaryDirectory(prefix="kvol-bench-", dir=workdir) as root:
        results: list[dict[str, Any]] = []
        for scenario in select(core_scenarios(), only):
            results += run_scenario(scenario, store_url, sizes, root=Path(root))
        return results
