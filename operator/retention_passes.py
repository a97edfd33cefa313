"""Each Volume's retention pass: when one is due, and the pass itself (prune history
outside spec.retention, collect garbage, measure storage)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

from kvol import errors
from kvol.operator import metrics, specs
from kvol.operator.backend_lookup import find_backend, reachable_store
from kvol.operator.failures import ReconcileError, classify
from kvol.operator.resources import VolumeSpec
from kvol.operator.shared import Part
from kvol.operator.status import Obj
from kvol.operator.volume_store import write_retention
from kvol.repo import Repo
from kvol.retention import PruneReport, prune_history, storage_usage


class RetentionPasses(Part):
    """Schedules and runs the retention passes over Volumes, reported in
    status.retention."""

    def due(self, body: Mapping[str, Any], now: float | None = None) -> bool:
        """Whether a Ready Volume's retention pass is due: a prune interval after the last
        one (status.retention.lastRun, so a restarted operator keeps the schedule), or at
        once when spec.retention names another policy than the last pass applied. Reads
        nothing but the object and what the operator last wrote."""
        interval = self.settings.prune_interval
        meta = body["metadata"]
        status = self.status.current(body)
        if interval <= 0 or meta.get("deletionTimestamp"):
            return False
        if status.get("phase") != "Ready" or not status.get("volumeId"):
            return False
        last = status.get("retention") or {}
        ran = _parse_time(last.get("lastRun"))
        if ran is None:
            return True
        try:
            wanted = VolumeSpec.parse(body.get("spec") or {}).retention_policy.describe()
            if wanted != last.get("policy"):
                return True
        except errors.InvalidArgument:
            pass  # the apply handler reports it; the schedule goes on
        return (time.time() if now is None else now) >= ran + interval

    def run(self, body: Mapping[str, Any]) -> Obj | None:
        """Prune history outside the volume's policy, then garbage-collect, as ``kvol
        volume gc`` does (neither runs for a volume that keeps every commit and was never
        pruned), and measure what the head refers to against what is stored. The policy
        is spec.retention's, written to the store first if it is not there yet. Reported
        in status.retention, in the storage gauges, and by an Event when it deleted
        anything.

        Runs under the Volume's lock: a long collection delays that Volume's other
        reconciliations, never another's. Only the leader runs handlers at all, and a
        leader that loses its Lease stops at once; a pass cut short is safe (every prune
        and collection step is), the next one finishes it.
        """
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        with self.locks.hold(f"{namespace}/{name}"):
            if not self.due(body):
                return None  # another pass ran while this one waited
            status = self.status.current(body)
            try:
                spec = VolumeSpec.parse(body.get("spec") or {})
            except errors.InvalidArgument:
                return None  # the apply handler reports it
            volume_id = status["volumeId"]
            backend = find_backend(self.backends, status.get("backend") or "")
            store = reachable_store(self.backends, backend)
            write_retention(store, volume_id, spec)
            repo = Repo(store, volume_id)
            last = status.get("retention") or {}
            policy = spec.retention_policy
            try:
                pruned: PruneReport | None = None
                freed = 0
                if not policy.keeps_everything or repo.horizon():
                    pruned = prune_history(repo, policy, grace_seconds=self.settings.gc_grace)
                    freed = repo.gc(grace_seconds=self.settings.gc_grace).bytes_deleted
                usage = storage_usage(repo)
            except errors.KvolError as exc:
                retry = classify(exc)
                message = f"retention pass over volume {volume_id}: {exc}"
                report: Obj = {**last, "error": message}
                if not retry:  # it fails the same way until something changes: next interval
                    report.update(lastRun=specs.now_rfc3339(), policy=policy.describe())
                if last.get("error") != message:
                    metrics.EVENTS.labels("Volume", "PruneFailed").inc()
                    self.emit(body, "Warning", "PruneFailed", message)
                with suppress(errors.KvolError):
                    self.status.write(body, {"retention": report})
                raise ReconcileError("PruneFailed", message, retry=retry) from exc
            report = specs.retention_status(policy, pruned, freed, usage)
            metrics.VOLUME_STORAGE.set(
                meta["uid"], namespace, name, usage.head_bytes, usage.stored_bytes
            )
            if pruned is not None and (pruned.advanced or pruned.entries_deleted or freed):
                metrics.EVENTS.labels("Volume", "Pruned").inc()
                self.emit(
                    body, "Normal", "Pruned", specs.pruned_message(policy, pruned, freed, usage)
                )
            return self.status.write(body, {"retention": report})


def _parse_time(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None
