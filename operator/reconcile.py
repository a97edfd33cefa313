"""Reconciliation of Volumes and VolumeBackends, without kopf.

Every step is idempotent, so the same function serves creation, resumption after an
operator restart, updates, and the periodic level-based pass. Failures come out as
:class:`ReconcileError` with a condition reason and whether retrying can help; the kopf
layer (handlers.py) turns that into a temporary or a permanent error.

The operator is the only writer of ``status``: it keeps what it last wrote per object,
writes only what changed, and posts an Event whenever a condition or the phase changes.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any

from kvol import errors
from kvol.catalog import Catalog
from kvol.operator import metrics, provisioner, specs
from kvol.operator.backends import store_url
from kvol.operator.kube import Kube
from kvol.operator.provisioner import claim_of
from kvol.operator.registry import Backend, Backends
from kvol.operator.resources import MANAGED_BY, VOLUME_LABEL, VolumeSpec
from kvol.repo import DEFAULT_GC_GRACE_SECONDS, Repo, RepoStats, new_volume_id
from kvol.retention import (
    PruneReport,
    RetentionPolicy,
    prune_history,
    read_policy,
    storage_usage,
    write_policy,
)
from kvol.store import Store
from kvol.volume_settings import VolumeSettings, write_settings

log = logging.getLogger(__name__)

#: (object, event type "Normal"|"Warning", reason, message)
#: (type, ok, reason, message) of one condition to set.
Condition = tuple[str, bool, str, str]
EventSink = Callable[[Mapping[str, Any], str, str, str], None]
Obj = dict[str, Any]

READY = "Ready"
REACHABLE = "BackendReachable"
#: Recorded in the catalog entries the operator writes: the only ones it adopts.
CATALOG_OWNER = "kvol-operator"


class ReconcileError(Exception):
    """A reconciliation that could not finish: ``reason`` goes into conditions."""

    def __init__(self, reason: str, message: str, *, retry: bool, delay: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry = retry
        self.delay = delay


def classify(exc: errors.KvolError) -> bool:
    """Whether retrying can help: a store or API server that is down, a missing backend or
    Secret, refused credentials (a Secret can be fixed). Bad input never gets better."""
    if exc.retryable:
        return True
    return isinstance(exc, errors.NotFound | errors.StoreError)


@dataclass
class Settings:
    #: Namespace of Secrets named by a VolumeBackend without a namespace.
    operator_namespace: str = "kvol-system"
    #: Seconds between level-based passes over each object (status, reachability).
    status_interval: float = 10.0
    #: Seconds before checking again whether pods still mount a Volume being deleted.
    in_use_retry: float = 5.0
    #: Window in which a writer counts as recent (status.writers).
    writers_window: float = 300.0
    #: Seconds between retention passes over each Volume (prune and garbage collection
    #: with a policy, storage measured either way); 0 turns them off.
    prune_interval: float = 3600.0
    #: The garbage collection grace of those passes (as ``kvol volume gc --grace``).
    gc_grace: float = DEFAULT_GC_GRACE_SECONDS


class KeyedLocks:
    """One lock per key, so a timer and a handler never reconcile the same object at once."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[threading.Lock, int]] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


@dataclass
class _StatsMemo:
    head: int
    stats: RepoStats
    #: status.pods: each pod that committed lately, newest first.
    pods: list[Obj]


#: At most this many pods are listed in a Volume's status (the count has them all).
MAX_PODS_LISTED = 50


def content_stats(repo: Repo, window: float, now: float | None = None) -> _StatsMemo:
    """The content status of a volume, and its recent writers from one walk back through
    the entries of the last ``window`` seconds: ``writers`` counts pods (entries name the
    pod whose copy made them), and other working copies (CLI, SDK) one each."""
    stats = repo.stats(writers_window=0)  # files, bytes, head, last commit: no walk
    cutoff = (time.time() if now is None else now) - window
    writers: set[str] = set()
    pods: dict[str, Obj] = {}
    seq = stats.head
    while seq > 0:
        entry = repo.read_entry(seq)
        if entry is None or entry.time < cutoff:
            break
        pod = entry.writer.pod
        writers.add(f"pod:{pod}" if pod else entry.writer.id)
        if pod and pod not in pods and len(pods) < MAX_PODS_LISTED:
            pods[pod] = {
                "name": pod.split("/", 1)[-1],
                "lastCommit": seq,
                # A copy's base moves to its own commit when no other commit came between.
                "baseSeq": seq if entry.base == seq - 1 else entry.base,
                "lastCommitTime": specs.rfc3339(entry.time),
            }
        seq -= 1
    return _StatsMemo(stats.head, replace(stats, writers_recent=len(writers)), list(pods.values()))


class Reconciler:
    def __init__(self, kube: Kube, backends: Backends, settings: Settings, emit: EventSink) -> None:
        self.kube = kube
        self.backends = backends
        self.settings = settings
        self.emit = emit
        self.locks = KeyedLocks()
        self._status: dict[str, Obj] = {}
        self._stats: dict[str, _StatsMemo] = {}
        self._volume_backend: dict[str, str] = {}
        self._guard = threading.Lock()

    # -- status bookkeeping -------------------------------------------------------------------

    def _current(self, obj: Mapping[str, Any]) -> Obj:
        with self._guard:
            known = self._status.get(obj["metadata"]["uid"])
        return dict(known if known is not None else obj.get("status") or {})

    def _write(
        self,
        obj: Mapping[str, Any],
        changes: Mapping[str, Any],
        conditions: Sequence[Condition] = (),
    ) -> Obj:
        """Apply ``changes`` and conditions to the status; patch and post events if it moved."""
        meta = obj["metadata"]
        current = self._current(obj)
        new = {**current, **changes}
        events: list[tuple[str, str, str]] = []
        for type_, ok, reason, message in conditions:
            before = specs.condition(new, type_)
            new["conditions"], flipped = specs.set_condition(
                new.get("conditions"),
                type_,
                ok,
                reason,
                message,
                generation=meta.get("generation"),
            )
            if flipped or (before is not None and before.get("reason") != reason):
                events.append(("Normal" if ok else "Warning", reason, message))
        if new.get("phase") != current.get("phase"):
            events.append(("Normal", new["phase"], f"Volume is {new['phase']}"))
        patch = {k: v for k, v in new.items() if current.get(k) != v}
        if patch:
            self.kube.patch_volume_status(meta["namespace"], meta["name"], patch)
            with self._guard:
                self._status[meta["uid"]] = {k: v for k, v in new.items() if v is not None}
        if new.get("phase"):
            metrics.VOLUME_PHASES.set(meta["uid"], new["phase"], meta["namespace"], meta["name"])
        for type_, reason, message in events:
            metrics.EVENTS.labels("Volume", reason).inc()
            self.emit(obj, type_, reason, message)
        return new

    def forget(self, uid: str, volume_id: str | None = None) -> None:
        with self._guard:
            self._status.pop(uid, None)
            self._volume_backend.pop(uid, None)
            if volume_id:
                self._stats.pop(volume_id, None)
        metrics.VOLUME_PHASES.forget(uid)
        metrics.VOLUME_STORAGE.forget(uid)

    def volumes_on(self, backend: str) -> int:
        with self._guard:
            return sum(1 for b in self._volume_backend.values() if b == backend)

    # -- volumes ---------------------------------------------------------------------------

    def reconcile_volume(self, body: Mapping[str, Any], *, fresh: bool = False) -> Obj | None:
        """Bring one Volume to Ready: volume id, store entry, PV and claim, status.

        ``body`` is what kopf last saw; the status this process wrote since takes
        precedence over its status, so a retry never picks a second volume id. ``fresh``
        reads the object from the API server first.
        """
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        with self.locks.hold(f"{namespace}/{name}"):
            obj = self.kube.get_volume(namespace, name) if fresh else dict(body)
            if obj is None or obj["metadata"].get("deletionTimestamp"):
                return None
            status = self._current(obj)
            try:
                return self._reconcile_volume(obj, status)
            except ReconcileError as exc:
                self._record_failure(obj, status, exc)
                raise

    def _record_failure(self, obj: Obj, status: Obj, exc: ReconcileError) -> None:
        changes: Obj = {"phase": status.get("phase") or "Pending", "message": exc.message}
        if not exc.retry:
            # Nothing changes until the spec does: the periodic pass skips this generation.
            changes.update(phase="Failed", observedGeneration=obj["metadata"].get("generation"))
        conditions: list[Condition] = [(READY, False, exc.reason, exc.message)]
        if exc.reason == "BackendUnreachable":
            conditions.append((REACHABLE, False, exc.reason, exc.message))
        try:
            self._write(obj, changes, conditions)
        except errors.KvolError as write_error:
            log.warning("could not record %s on %s: %s", exc.reason, _ref(obj), write_error)

    def _reconcile_volume(self, obj: Obj, status: Obj) -> Obj:
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            spec = VolumeSpec.parse(obj.get("spec") or {})
        except errors.InvalidArgument as exc:
            raise ReconcileError("InvalidSpec", str(exc), retry=False) from exc
        # The backend chosen at creation stays, even if the default changes later.
        backend = self._backend(status.get("backend") or spec.backend)
        with self._guard:
            self._volume_backend[meta["uid"]] = backend.name
        store = self._reachable(backend)
        volume_id = status.get("volumeId")
        if not volume_id:
            volume_id = self._retained_id(store, namespace, name) or new_volume_id()
            # Persist the id before anything is written to the store: a retry after a
            # crash finds it here and writes the same volume again, never a second one.
            status = self._write(
                obj,
                {
                    "phase": status.get("phase") or "Pending",
                    "volumeId": volume_id,
                    "backend": backend.name,
                    "claimName": specs.claim_name(name),
                    "persistentVolumeName": specs.pv_name(volume_id),
                },
            )
        # Before the name exists: no pod can mount the volume without its settings.
        self._write_settings(store, volume_id, spec)
        self._write_retention(store, volume_id, spec)
        self._create_in_store(store, namespace, name, spec, volume_id)
        self._ensure_pv_and_claim(obj, spec, volume_id, backend.name)
        stats = self._repo_stats(store, volume_id)
        return self._write(
            obj,
            {
                "phase": "Ready",
                "message": None,
                "observedGeneration": meta.get("generation"),
                **specs.stats_status(stats.stats, stats.pods),
            },
            [
                (REACHABLE, True, "Reachable", f"backend {backend.name} answers"),
                (READY, True, "Provisioned", f"volume {volume_id} in backend {backend.name}"),
            ],
        )

    def refresh_volume(self, body: Mapping[str, Any]) -> Obj | None:
        """The periodic, level-based pass: provision what is not, refresh content status."""
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return None
        status = self._current(body)
        provisioned = status.get("phase") == "Ready" and status.get("volumeId")
        if not provisioned or status.get("observedGeneration") != meta.get("generation"):
            if status.get("phase") == "Failed" and status.get("observedGeneration") == meta.get(
                "generation"
            ):
                return None  # an invalid spec stays invalid until it is changed
            return self.reconcile_volume(body)
        with self.locks.hold(f"{meta['namespace']}/{meta['name']}"):
            status = self._current(body)
            try:
                backend = self._backend(status.get("backend") or "")
                store = self._reachable(backend)
                stats = self._repo_stats(store, status["volumeId"])
            except ReconcileError as exc:
                self._record_failure(dict(body), status, exc)
                raise
            return self._write(
                body,
                specs.stats_status(stats.stats, stats.pods),
                [
                    (REACHABLE, True, "Reachable", f"backend {backend.name} answers"),
                    (
                        READY,
                        True,
                        "Provisioned",
                        f"volume {status['volumeId']} in backend {backend.name}",
                    ),
                ],
            )

    # -- retention -------------------------------------------------------------------------

    def retention_due(self, body: Mapping[str, Any], now: float | None = None) -> bool:
        """Whether a Ready Volume's retention pass is due: a prune interval after the last
        one (status.retention.lastRun, so a restarted operator keeps the schedule), or at
        once when spec.retention names another policy than the last pass applied. Reads
        nothing but the object and what the operator last wrote."""
        interval = self.settings.prune_interval
        meta = body["metadata"]
        status = self._current(body)
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

    def retention_pass(self, body: Mapping[str, Any]) -> Obj | None:
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
            if not self.retention_due(body):
                return None  # another pass ran while this one waited
            status = self._current(body)
            try:
                spec = VolumeSpec.parse(body.get("spec") or {})
            except errors.InvalidArgument:
                return None  # the apply handler reports it
            volume_id = status["volumeId"]
            backend = self._backend(status.get("backend") or "")
            store = self._reachable(backend)
            self._write_retention(store, volume_id, spec)
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
                    self._write(body, {"retention": report})
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
            return self._write(body, {"retention": report})

    def _backend(self, name: str) -> Backend:
        try:
            return self.backends.get(name) if name else self.backends.default()
        except errors.NotFound as exc:
            raise ReconcileError("BackendNotFound", str(exc), retry=True) from exc
        except errors.InvalidArgument as exc:
            raise ReconcileError("BackendInvalid", str(exc), retry=True) from exc
        except errors.KvolError as exc:
            raise ReconcileError("APIError", str(exc), retry=classify(exc)) from exc

    def _reachable(self, backend: Backend) -> Store:
        try:
            return self.backends.probe(backend)
        except errors.InvalidArgument as exc:
            raise ReconcileError("BackendInvalid", str(exc), retry=True) from exc
        except errors.NotFound as exc:  # its Secret
            raise ReconcileError("BackendCredentials", str(exc), retry=True) from exc
        except errors.KvolError as exc:
            raise ReconcileError(
                "BackendUnreachable", f"backend {backend.name}: {exc}", retry=True
            ) from exc

    @staticmethod
    def _retained_id(store: Store, namespace: str, name: str) -> str | None:
        """A volume of this name kept by a Retain policy is adopted, not replaced; a name
        the operator did not write is never adopted (its volume is someone else's, which
        a Delete policy would destroy)."""
        try:
            entry = Catalog.for_namespace(store, namespace).entry(name)
        except errors.NotFound:
            return None
        except errors.KvolError as exc:
            raise ReconcileError("BackendUnreachable", str(exc), retry=classify(exc)) from exc
        if entry.owner != CATALOG_OWNER:
            raise ReconcileError(
                "NameTaken",
                f"the backend's catalog already has a volume named {namespace}/{name} "
                f"({entry.volume_id}) that the operator did not create; it is not adopted: "
                "remove that name from the store or give this Volume another name",
                retry=False,
            )
        return entry.volume_id

    @staticmethod
    def _write_settings(store: Store, volume_id: str, spec: VolumeSpec) -> None:
        """What the node plugin reads at publish (it has no API access): a change reaches
        the pods that mount the volume after it."""
        settings = VolumeSettings(autocommit_seconds=float(spec.autocommit_interval_seconds))
        try:
            write_settings(store, volume_id, settings)
        except errors.KvolError as exc:
            raise ReconcileError("BackendUnreachable", str(exc), retry=classify(exc)) from exc

    @staticmethod
    def _write_retention(store: Store, volume_id: str, spec: VolumeSpec) -> None:
        """spec.retention is the volume's policy: set, changed, or cleared with it. Written
        only when it differs, so a resumed operator rewrites nothing."""
        wanted = spec.retention_policy
        try:
            try:
                current: RetentionPolicy | None = read_policy(store, volume_id)
            except errors.CorruptData:
                current = None  # an unreadable policy is replaced whole
            if current != wanted:
                write_policy(store, volume_id, wanted)
        except errors.KvolError as exc:
            raise ReconcileError("BackendUnreachable", str(exc), retry=classify(exc)) from exc

    @staticmethod
    def _create_in_store(
        store: Store, namespace: str, name: str, spec: VolumeSpec, volume_id: str
    ) -> None:
        try:
            Catalog.for_namespace(store, namespace).create(
                name,
                version=spec.version,
                limits=spec.limits,
                volume_id=volume_id,
                allow_existing=True,
                owner=CATALOG_OWNER,
            )
        except errors.AlreadyExists as exc:
            raise ReconcileError(
                "NameTaken",
                f"the backend's catalog maps {namespace}/{name} to another volume than "
                f"{volume_id}: {exc}",
                retry=False,
            ) from exc
        except errors.InvalidArgument as exc:  # VersionMismatch among them
            raise ReconcileError("InvalidSpec", str(exc), retry=False) from exc
        except errors.KvolError as exc:
            raise ReconcileError("BackendUnreachable", str(exc), retry=classify(exc)) from exc

    def _ensure_pv_and_claim(
        self, obj: Obj, spec: VolumeSpec, volume_id: str, backend: str
    ) -> None:
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        claim = claim_of(obj)
        pv = specs.build_pv_spec(
            namespace=namespace,
            name=name,
            volume_id=volume_id,
            backend=backend,
            spec=spec,
            claim=claim,
        )
        pvc = specs.build_pvc_spec(volume=obj, volume_id=volume_id, spec=spec)
        try:
            self._create_or_adopt(
                pv,
                self.kube.create_pv,
                lambda: self.kube.get_pv(pv["metadata"]["name"]),
                namespace,
                name,
            )
            if claim is not None:
                return  # the user's claim, which the PV controller binds to this PV
            self._create_or_adopt(
                pvc,
                self.kube.create_pvc,
                lambda: self.kube.get_pvc(namespace, pvc["metadata"]["name"]),
                namespace,
                name,
            )
        except errors.KvolError as exc:
            raise ReconcileError("APIError", str(exc), retry=classify(exc)) from exc

    @staticmethod
    def _create_or_adopt(
        body: Obj,
        create: Callable[[Obj], Obj],
        get: Callable[[], Obj | None],
        namespace: str,
        name: str,
    ) -> None:
        try:
            create(body)
            return
        except errors.Conflict:
            existing = get()
        if existing is None:
            raise errors.Conflict(f"{body['kind']} {body['metadata']['name']} is being deleted")
        labels = existing["metadata"].get("labels") or {}
        if labels.get(VOLUME_LABEL) != name or labels.get(f"{VOLUME_LABEL}-namespace") != namespace:
            raise ReconcileError(
                "ClaimConflict",
                f"a {existing['kind'] if 'kind' in existing else body['kind']} named "
                f"{body['metadata']['name']} exists that kvol did not make for this Volume: "
                "delete or rename it",
                retry=True,
                delay=30,
            )

    def _repo_stats(self, store: Store, volume_id: str) -> _StatsMemo:
        """Content status; recomputed only when the head moved or writers may have aged out."""
        repo = Repo(store, volume_id)
        try:
            head = repo.head()
            memo = self._stats.get(volume_id)
            window = self.settings.writers_window
            if memo is not None and memo.head == head:
                last = memo.stats.last_commit_time
                if memo.stats.writers_recent == 0 or last is None or time.time() - last > window:
                    return memo
            memo = content_stats(repo, window)
        except errors.KvolError as exc:
            raise ReconcileError(
                "BackendUnreachable", f"reading volume {volume_id}: {exc}", retry=classify(exc)
            ) from exc
        self._stats[volume_id] = memo
        return memo

    # -- dynamic provisioning ------------------------------------------------------------------

    def provision_claim(self, claim: Mapping[str, Any], *, deleted: bool = False) -> None:
        """Give a pending claim of a kvol StorageClass its Volume; remove the Volume with
        its claim (the Volume's reclaim policy, the class's, then keeps or removes the
        data). Claims of other classes, and Volumes not made for this claim, are left alone."""
        meta = claim["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        class_name = (claim.get("spec") or {}).get("storageClassName")
        if not class_name:
            return
        storage_class = self.kube.get_storage_class(class_name)
        if storage_class is None or not provisioner.is_ours(storage_class):
            return
        volume = self.kube.get_volume(namespace, name)
        made_for = claim_of(volume) if volume is not None else None
        mine = made_for is not None and made_for[1] == meta["uid"]
        if deleted or meta.get("deletionTimestamp"):
            if volume is not None and mine and not volume["metadata"].get("deletionTimestamp"):
                self.kube.delete_volume(namespace, name)
                log.info("claim %s/%s deleted: deleting its Volume", namespace, name)
            return
        if not provisioner.wants_volume(claim):
            return
        if volume is not None:
            if not mine:
                self.emit(
                    claim,
                    "Warning",
                    "ProvisioningFailed",
                    f"a Volume named {name} exists that was not made for this claim: "
                    "delete it or give the claim another name",
                )
            return
        try:
            body = provisioner.volume_for_claim(claim, storage_class)
        except errors.InvalidArgument as exc:
            self.emit(claim, "Warning", "ProvisioningFailed", str(exc))
            return
        try:
            self.kube.create_volume(body)
        except errors.Conflict:
            return  # made meanwhile (an earlier event of the same claim)
        self.emit(
            claim,
            "Normal",
            "Provisioning",
            f"Volume {name} created for this claim (StorageClass {class_name})",
        )

    # -- deletion ---------------------------------------------------------------------------------

    def delete_volume(self, body: Mapping[str, Any]) -> None:
        """Carry out the reclaim policy. Returns only when the finalizer may go."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        with self.locks.hold(f"{namespace}/{name}"):
            obj = self.kube.get_volume(namespace, name) or dict(body)
            status = self._current(obj)
            try:
                policy = VolumeSpec.parse(obj.get("spec") or {}).reclaim_policy
            except errors.InvalidArgument:
                policy = "Retain"  # when in doubt, keep the data
            volume_id = status.get("volumeId")
            try:
                self._write(obj, {"phase": "Terminating"})
                if policy == "Delete" and volume_id:
                    users = [
                        pod["metadata"]["name"]
                        for pod in self.kube.list_pods(namespace)
                        if specs.pod_uses_volume(pod, name)
                    ]
                    if users:
                        raise ReconcileError(
                            "InUse",
                            f"mounted by pod(s) {', '.join(sorted(users))}: the data is removed "
                            "once no pod has the volume mounted",
                            retry=True,
                            delay=self.settings.in_use_retry,
                        )
                self._delete_claim(namespace, name, volume_id)
                if policy == "Delete" and volume_id:
                    backend = self._backend(status.get("backend") or "")
                    store = self._reachable(backend)
                    self._destroy(store, namespace, name, volume_id)
                    self.emit(
                        obj,
                        "Normal",
                        "Deleted",
                        f"volume {volume_id} removed from backend {backend.name}",
                    )
                elif volume_id:
                    self.emit(
                        obj,
                        "Normal",
                        "Retained",
                        f"volume {volume_id} kept in backend {status.get('backend')}",
                    )
            except ReconcileError as exc:
                with suppress(errors.KvolError):
                    self._write(
                        obj, {"message": exc.message}, [(READY, False, exc.reason, exc.message)]
                    )
                raise
            except errors.KvolError as exc:
                raise ReconcileError("APIError", str(exc), retry=classify(exc)) from exc
            self.forget(meta["uid"], volume_id)

    def _delete_claim(self, namespace: str, name: str, volume_id: str | None) -> None:
        pvc = self.kube.get_pvc(namespace, specs.claim_name(name))
        if pvc is not None and _ours(pvc, namespace, name):
            self.kube.delete_pvc(namespace, specs.claim_name(name))
        if volume_id:
            pv = self.kube.get_pv(specs.pv_name(volume_id))
            if pv is not None and _ours(pv, namespace, name):
                self.kube.delete_pv(specs.pv_name(volume_id))

    @staticmethod
    def _destroy(store: Store, namespace: str, name: str, volume_id: str) -> None:
        catalog = Catalog.for_namespace(store, namespace)
        try:
            try:
                named = catalog.entry(name).volume_id
            except errors.NotFound:
                named = None
            if named == volume_id:
                catalog.delete(name, allow_missing=True)
            elif not catalog.names_of(volume_id):
                # The name was never written, or points elsewhere: remove our data, unless
                # another name still refers to it (a name an older operator wrote in the
                # CLI's scope for namespace main: its user still reads the volume there).
                Repo(store, volume_id).destroy()
        except errors.KvolError as exc:
            raise ReconcileError(
                "BackendUnreachable", f"removing volume {volume_id}: {exc}", retry=True
            ) from exc

    # -- backends -------------------------------------------------------------------------------

    def reconcile_backend(self, body: Mapping[str, Any], *, periodic: bool = False) -> Obj | None:
        """Check a backend and write its status; raise when it is invalid or unreachable."""
        meta = body["metadata"]
        name = meta["name"]
        self.backends.observe(body)
        with self.locks.hold(f"backend/{name}"):
            status = self._current(body)
            if (
                periodic
                and status.get("phase") == "Invalid"
                and status.get("observedGeneration") == meta.get("generation")
            ):
                return None  # an invalid spec stays invalid until it is changed
            changes: Obj = {
                "observedGeneration": meta.get("generation"),
                "volumes": self.volumes_on(name),
            }
            error: ReconcileError | None = None
            try:
                backend = self._backend(name)
                changes["url"] = store_url(backend.spec)
                self._reachable(backend)
                changes.update(phase="Ready", message=None)
                cond: Condition = ("Reachable", True, "Reachable", "the store answers")
            except ReconcileError as exc:
                invalid = exc.reason == "BackendInvalid"
                # Retrying an invalid spec cannot help; an unreachable store may come back.
                error = ReconcileError(exc.reason, exc.message, retry=not invalid)
                changes.update(phase="Invalid" if invalid else "Unreachable", message=exc.message)
                cond = ("Reachable", False, exc.reason, exc.message)
            new = {**status, **changes}
            new["conditions"], flipped = specs.set_condition(
                status.get("conditions"), *cond, generation=meta.get("generation")
            )
            defaults = self.backends.defaults()
            if len(defaults) > 1 and name in defaults:
                new["conditions"], _ = specs.set_condition(
                    new["conditions"],
                    "Default",
                    False,
                    "MultipleDefaults",
                    f"backends {', '.join(defaults)} are all marked default: mark one",
                )
            patch = {k: v for k, v in new.items() if status.get(k) != v}
            if patch:
                self.kube.patch_backend_status(name, patch)
                with self._guard:
                    self._status[meta["uid"]] = {k: v for k, v in new.items() if v is not None}
            if flipped:
                metrics.EVENTS.labels("VolumeBackend", cond[2]).inc()
                self.emit(body, "Normal" if cond[1] else "Warning", cond[2], cond[3])
            if error is not None:
                raise error
            return new

    def delete_backend(self, body: Mapping[str, Any]) -> None:
        """A backend goes only when no Volume keeps data in it (its Volumes could not be
        reached, nor deleted with their reclaim policy, without it)."""
        name = body["metadata"]["name"]
        try:
            users = sorted(
                f"{v['metadata']['namespace']}/{v['metadata']['name']}"
                for v in self.kube.list_volumes()
                if (v.get("status") or {}).get("backend") == name
            )
        except errors.KvolError as exc:
            raise ReconcileError("APIError", str(exc), retry=classify(exc)) from exc
        if users:
            shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
            raise ReconcileError(
                "InUse",
                f"VolumeBackend {name} still holds {len(users)} Volume(s): {shown}",
                retry=True,
                delay=self.settings.in_use_retry,
            )
        self.backends.forget(name)
        self.forget(body["metadata"]["uid"])


def _parse_time(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def _ours(obj: Mapping[str, Any], namespace: str, name: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return (
        labels.get(VOLUME_LABEL) == name
        and labels.get(f"{VOLUME_LABEL}-namespace") == namespace
        and all(labels.get(k) == v for k, v in MANAGED_BY.items())
    )


def _ref(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"
