"""The operator's own metrics (the core's kvol_store_* metrics are exported beside them).

Labels name a resource kind, a handler and a result, never an object, except
``kvol_operator_volume_phase``, which names each Volume by namespace and name: bounded by the
number of Volumes, like the kubelet's per-claim volume stats. Volumes by phase are counted
when scraped, from the phases the operator last wrote.
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
