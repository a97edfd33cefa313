"""Prometheus metric definitions shared by the CLI, the CSI plugin and the SDK.

Names follow Prometheus conventions: the ``kvol_`` prefix, base units, ``_total`` on
counters. Labels never carry a volume id, a path, a pod or a commit id: their number must
stay bounded whatever users do. The per-volume ``kvol_volume_*`` gauges carry the volume's
``namespace`` and ``volume`` name, bounded by the number of volumes (as the kubelet's
``kubelet_volume_stats_*{namespace,persistentvolumeclaim}``). The operator defines its own
metrics in its package.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import kvol

#: Whether this process records metrics, as the process said before anything imported
#: this module (see kvol._METRICS).
RECORDING = kvol._METRICS

if TYPE_CHECKING or RECORDING:
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import REGISTRY, Collector
else:

    class _Inert:
        """A metric that records nothing, for a process nothing scrapes."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def labels(self, *values: object) -> _Inert:
            return self

        def inc(self, amount: float = 1) -> None:
            pass

        def dec(self, amount: float = 1) -> None:
            pass

        def set(self, value: float) -> None:
            pass

        def observe(self, value: float) -> None:
            pass

    Counter = Gauge = Histogram = _Inert
    Collector = object

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
NODE_CACHE_BYTES = Gauge(
    "kvol_node_cache_bytes",
    "Apparent size of the node's content cache, the entries snapshots link included.",
)
NODE_CACHE_LIMIT_BYTES = Gauge(
    "kvol_node_cache_limit_bytes",
    "Size the node's content cache is trimmed to (0: no limit).",
)
NODE_CACHE_HITS = Counter(
    "kvol_node_cache_hits_total",
    "Files a snapshot build found in the node's content cache.",
)
NODE_CACHE_MISSES = Counter(
    "kvol_node_cache_misses_total",
    "Files a snapshot build had to fetch from the store.",
)
NODE_CACHE_EVICTIONS = Counter(
    "kvol_node_cache_evictions_total",
    "Entries evicted from the node's content cache to keep it within its limit.",
)

# Lazy fetching (``kvol-csi --lazy-fetch``): content fetched when first read.
LAZY_FETCHES = Counter(
    "kvol_lazy_fetches_total",
    "Pieces of content fetched into not-yet-fetched files (a part of an image snapshot's "
    "blob, or a whole placeholder file), by result (ok, failed).",
    ["result"],
)
LAZY_FETCHED_BYTES = Counter(
    "kvol_lazy_fetched_bytes_total",
    "Bytes written into not-yet-fetched files by lazy fetches.",
)
LAZY_READS_HELD = Counter(
    "kvol_lazy_reads_held_total",
    "Reads held until the content under them was fetched, by result (ok, failed: the "
    "read got EIO).",
    ["result"],
)
LAZY_READ_WAIT_SECONDS = Histogram(
    "kvol_lazy_read_wait_seconds",
    "How long a read was held for the content under it.",
    buckets=_LATENCY_BUCKETS,
)
LAZY_PENDING_BYTES = Gauge(
    "kvol_lazy_pending_bytes",
    "Bytes of the image snapshots on this node not fetched yet.",
)
# Every result from the start, at zero: a node that never fetched lazily (or never
# failed) shows a flat line on the dashboard, not a panel without data.
for _result in ("ok", "failed"):
    LAZY_FETCHES.labels(_result)
    LAZY_READS_HELD.labels(_result)


def count_held_read(ok: bool, since: float) -> None:
    """A read held for lazily fetched content was answered; it came at ``since``
    (``time.monotonic()``)."""
    LAZY_READS_HELD.labels("ok" if ok else "failed").inc()
    LAZY_READ_WAIT_SECONDS.observe(time.monotonic() - since)


@dataclass(frozen=True)
class CopySample:
    """One working copy a node serves, as the per-volume gauges count it."""

    namespace: str
    volume: str
    read_only: bool
    uncommitted_bytes: int
    #: Whether its last background commit failed (the next one retries).
    commit_failing: bool
    #: Log position of the newest commit the copy is based on.
    base_seq: int


class NodeCollector(Collector):
    """Per-volume gauges of the working copies a node plugin serves, and the space left
    where it keeps them, computed when scraped. Copies of one volume are summed, so the
    series are bounded by the number of volumes, never by pods."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state_dir: Path | None = None
        self._copies: Callable[[], Iterable[CopySample]] | None = None

    def watch(self, state_dir: Path, copies: Callable[[], Iterable[CopySample]]) -> None:
        """Report on ``state_dir`` and on what ``copies`` returns (a bound method is held
        weakly, so a stopped service is not kept alive by its metrics)."""
        current: Callable[[], Iterable[CopySample]] = copies
        if hasattr(copies, "__self__"):
            ref = weakref.WeakMethod(copies)

            def current() -> Iterable[CopySample]:
                method = ref()
                return method() if method is not None else ()

        with self._lock:
            self._state_dir = state_dir
            self._copies = current

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            state_dir, copies = self._state_dir, self._copies
        if copies is None or state_dir is None:
            return
        labels = ["namespace", "volume"]
        writers = GaugeMetricFamily(
            "kvol_volume_writers",
            "Working copies of the volume open for writing on this node.",
            labels=labels,
        )
        readers = GaugeMetricFamily(
            "kvol_volume_readers",
            "Read-only working copies of the volume on this node.",
            labels=labels,
        )
        uncommitted = GaugeMetricFamily(
            "kvol_volume_uncommitted_bytes",
            "Bytes of changed files not yet committed in the volume's working copies here.",
            labels=labels,
        )
        failing = GaugeMetricFamily(
            "kvol_volume_commit_failing",
            "Working copies of the volume here whose last background commit failed.",
            labels=labels,
        )
        seq = GaugeMetricFamily(
            "kvol_volume_base_seq",
            "Log position of the newest commit the volume's working copies here are based on.",
            labels=labels,
        )
        totals: dict[tuple[str, str], list[int]] = {}
        for c in copies():
            t = totals.setdefault((c.namespace, c.volume), [0, 0, 0, 0, 0])
            t[1 if c.read_only else 0] += 1
            t[2] += c.uncommitted_bytes
            t[3] += int(c.commit_failing)
            t[4] = max(t[4], c.base_seq)
        for key, (w, r, u, f, s) in sorted(totals.items()):
            name = list(key)
            writers.add_metric(name, w)
            readers.add_metric(name, r)
            uncommitted.add_metric(name, u)
            failing.add_metric(name, f)
            seq.add_metric(name, s)
        yield from (writers, readers, uncommitted, failing, seq)
        try:
            st = os.statvfs(state_dir)
        except OSError:
            return  # not there yet: no series rather than a wrong one
        yield GaugeMetricFamily(
            "kvol_node_state_size_bytes",
            "Size of the filesystem holding the node's working copies, snapshots and cache.",
            value=st.f_blocks * st.f_frsize,
        )
        yield GaugeMetricFamily(
            "kvol_node_state_avail_bytes",
            "Bytes still available to the plugin on the filesystem of its state directory.",
            value=st.f_bavail * st.f_frsize,
        )


NODE = NodeCollector()
if RECORDING:
    REGISTRY.register(NODE)
