"""The operator's own metrics (the core's kvol_store_* metrics are exported beside them).

Labels name a resource kind, a handler and a result, never an object, except
``kvol_operator_volume_phase`` and the storage gauges ``kvol_volume_head_bytes`` and
``kvol_volume_stored_bytes``, which name each Volume by namespace and name: bounded by the
number of Volumes, like the kubelet's per-claim volume stats. Volumes by phase are counted
when scraped, from the phases the operator last wrote; the storage gauges show what the
last retention pass measured (a scrape never reads the store).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

RECONCILES = Counter(
    "kvol_operator_reconciles_total",
    "Reconciliations run, by resource kind, handler and result "
    "(ok, retry for a temporary error, failed for a permanent one).",
    ["kind", "handler", "result"],
)
RECONCILE_SECONDS = Histogram(
    "kvol_operator_reconcile_duration_seconds",
    "Time one reconciliation took, by resource kind and handler.",
    ["kind", "handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EVENTS = Counter(
    "kvol_operator_events_total",
    "Kubernetes Events posted, by resource kind and reason.",
    ["kind", "reason"],
)

PHASES = ("Pending", "Ready", "Failed", "Terminating")


class PhaseTracker(Collector):
    """Volumes by phase, as ``kvol_operator_volumes{phase}``, and each Volume's phase as
    ``kvol_operator_volume_phase{namespace,volume,phase} 1``."""

    def __init__(self) -> None:
        self._phases: dict[str, str] = {}
        self._names: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def set(self, uid: str, phase: str, namespace: str = "", name: str = "") -> None:
        with self._lock:
            self._phases[uid] = phase
            if name:
                self._names[uid] = (namespace, name)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._phases.pop(uid, None)
            self._names.pop(uid, None)

    def counts(self) -> dict[str, int]:
        with self._lock:
            phases = list(self._phases.values())
        counts = dict.fromkeys(PHASES, 0)
        for phase in phases:
            counts[phase] = counts.get(phase, 0) + 1
        return counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "kvol_operator_volumes", "Volumes known to the operator, by phase.", labels=["phase"]
        )
        for phase, count in sorted(self.counts().items()):
            family.add_metric([phase], count)
        yield family
        each = GaugeMetricFamily(
            "kvol_operator_volume_phase",
            "1 for each Volume, labelled with its namespace, name and current phase.",
            labels=["namespace", "volume", "phase"],
        )
        with self._lock:
            named = [
                (*self._names[uid], phase)
                for uid, phase in self._phases.items()
                if uid in self._names
            ]
        for labels in sorted(named):
            each.add_metric(list(labels), 1)
        yield each


VOLUME_PHASES = PhaseTracker()
REGISTRY.register(VOLUME_PHASES)


class StorageTracker(Collector):
    """Each Volume's content bytes as its last retention pass measured them (only the
    leader runs passes, so only it exports these): ``kvol_volume_head_bytes`` (what the
    head refers to) and ``kvol_volume_stored_bytes`` (what the store holds for the volume;
    the difference is the history kept)."""

    def __init__(self) -> None:
        self._volumes: dict[str, tuple[str, str, int, int]] = {}
        self._lock = threading.Lock()

    def set(self, uid: str, namespace: str, name: str, head_bytes: int, stored_bytes: int) -> None:
        with self._lock:
            self._volumes[uid] = (namespace, name, head_bytes, stored_bytes)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._volumes.pop(uid, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        head = GaugeMetricFamily(
            "kvol_volume_head_bytes",
            "Bytes of content the Volume's newest commit refers to (each stored piece once), "
            "as of the operator's last retention pass.",
            labels=["namespace", "volume"],
        )
        stored = GaugeMetricFamily(
            "kvol_volume_stored_bytes",
            "Bytes of content the store holds for the Volume, as of the operator's last "
            "retention pass: above kvol_volume_head_bytes by the history kept.",
            labels=["namespace", "volume"],
        )
        with self._lock:
            volumes = sorted(self._volumes.values())
        for namespace, name, head_bytes, stored_bytes in volumes:
            head.add_metric([namespace, name], head_bytes)
            stored.add_metric([namespace, name], stored_bytes)
        yield head
        yield stored


VOLUME_STORAGE = StorageTracker()
REGISTRY.register(VOLUME_STORAGE)
