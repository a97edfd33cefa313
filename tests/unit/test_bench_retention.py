"""The checkpoint-rewrite benchmark at a tiny size: with keep-last N the store stays near N
versions of the file (one more until the grace of the last prune has passed), without a
policy it holds every version. Bytes are asserted, never time."""

from __future__ import annotations

from pathlib import Path

from bench.retention_rewrite import Workload, checkpoint_rewrite

#: Log entries, checkpoints and volume metadata: small beside a MiB of content.
METADATA = 64 * 1024


def test_keep_last_bounds_the_store_and_no_policy_keeps_every_version(tmp_path: Path) -> None:
    workload = Workload(size_mib=1, rewrites=8, keep_last=3)
    size = workload.file_bytes
    details = checkpoint_rewrite(tmp_path, workload).to_dict()["details"]
    assert (workload.keep_last + 1) * size <= details["bounded_peak_bytes"]
    assert details["bounded_peak_bytes"] <= (workload.keep_last + 1) * size + METADATA
    assert workload.keep_last * size <= details["bounded_settled_bytes"]
    assert details["bounded_settled_bytes"] <= workload.keep_last * size + METADATA
    assert workload.rewrites * size <= details["unbounded_store_bytes"]
    assert details["unbounded_store_bytes"] <= workload.rewrites * size + METADATA
