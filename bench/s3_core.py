"""The core's per-store scenarios again, on a real MinIO started for the run.

Their filesystem runs come from the core modules themselves; these results carry the S3
store's URL, so the JSON holds both side by side.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bench import core_commit, core_reload
from bench.harness import Context, Result, RunFn, Scenario, as_scenario
from bench.s3_minio import kvol_env, server


def _on_minio(scenario: Scenario) -> RunFn:
    def run(ctx: Context) -> list[Result | dict[str, Any]]:
        kvol_env()
        url = server().url(server().create_bucket(), "kvol")
        raw = scenario.run(replace(ctx, store_url=url))
        results: list[Result | dict[str, Any]] = []
        for item in raw if isinstance(raw, list | tuple) else [raw]:
            if isinstance(item, Result):
                item.store = url
                results.append(item)
            elif isinstance(item, dict):
                results.append({**item, "store": url})
            else:
                raise TypeError(f"{scenario.name} returned {item!r}")
        return results

    return run


SCENARIOS = [
    Scenario(f"s3.{s.name}", _on_minio(s), per_store=False, description=f"{s.description} (MinIO)")
    for s in map(as_scenario, [*core_commit.SCENARIOS, *core_reload.SCENARIOS])
    if s.per_store
]
