"""Prometheus metric definitions shared by the CLI, the CSI plugin and the SDK.

Names follow Prometheus conventions: the ``kvol_`` prefix, base units, ``_total`` on
counters. Labels never carry a volume id, a path or a commit id: their number must stay
bounded whatever users do. The operator defines its own metrics in its package.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Latency buckets from a no-op commit on local disk (~1 ms) to a large upload (minutes).
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)

COMMITS = Counter(
    "kvol_commits_total",
    "Commits attempted, by result (published, empty, failed).",
    ["result"],
)
COMMIT_SECONDS = Histogram(
    "kvol_commit_duration_seconds",
    "Time from the start of a commit until its log entry is published.",
    buckets=_LATENCY_BUCKETS,
)
COMMIT_CONFLICTS = Counter(
    "kvol_commit_conflicts_total",
    "Log positions lost to a concurrent writer and retried at the next one.",
)
COMMITTED_BYTES = Counter(
    "kvol_committed_bytes_total",
    "Bytes of file content published by commits (before deduplication).",
)
UPLOADED_BYTES = Counter(
    "kvol_uploaded_bytes_total",
    "Bytes actually sent to the store by commits (after deduplication).",
)
COMMITTED_FILES = Counter(
    "kvol_committed_files_total",
    "Files written or deleted by published commits.",
)
RELOADS = Counter(
    "kvol_reloads_total",
    "Reloads attempted, by result (applied, current, busy, failed).",
    ["result"],
)
RELOAD_SECONDS = Histogram(
    "kvol_reload_duration_seconds",
    "Time a reload took.",
    buckets=_LATENCY_BUCKETS,
)
DOWNLOADED_BYTES = Counter(
    "kvol_downloaded_bytes_total",
    "Bytes of content read from the store (cache misses).",
)
WRITERS = Gauge(
    "kvol_writers",
    "Working copies open for writing in this process.",
)
UNCOMMITTED_BYTES = Gauge(
    "kvol_uncommitted_bytes",
    "Bytes of changed files not yet committed, summed over this process's working copies.",
)
STORE_REQUESTS = Counter(
    "kvol_store_requests_total",
    "Requests made to a store, by store kind, operation and result.",
    ["store", "operation", "result"],
)
STORE_REQUEST_SECONDS = Histogram(
    "kvol_store_request_duration_seconds",
    "Latency of store requests, by store kind and operation.",
    ["store", "operation"],
    buckets=_LATENCY_BUCKETS,
)
