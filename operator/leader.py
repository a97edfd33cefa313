"""Leader election on a ``coordination.k8s.io/v1`` Lease: one replica acts, the others wait.

The rules are client-go's: a Lease is free when it names no holder, or when its record
(holder and renew time) has not changed for its ``leaseDurationSeconds`` as measured on
*this* process's monotonic clock since it last saw the record change, so clocks of other
machines never matter. Every write carries the ``resourceVersion`` it was read at: of two
candidates racing for a free Lease, the API server lets exactly one write through.

The holder renews every ``retry_period``. If it cannot renew for ``renew_deadline`` (which
is shorter than the lease duration) it has lost the Lease and must stop acting before any
other replica may take it over: :class:`LeaderElector` calls ``on_lost``, and the
operator exits at once (its reconciliations are idempotent and crash-safe, so a hard stop
loses nothing; the replacement finishes the work).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvol import errors
from kvol.operator.kube import Kube

log = logging.getLogger(__name__)

Obj = dict[str, Any]


@dataclass(frozen=True)
class LeaseTiming:
    #: How long a holder's Lease stays valid without a renewal.
    lease_duration: float = 15.0
    #: How long the holder keeps trying to renew before it gives up acting.
    renew_deadline: float = 10.0
    #: Pause between attempts to acquire or renew.
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise errors.InvalidArgument(
                "leader election needs 0 < retry period < renew deadline < lease duration, not "
                f"{self.retry_period} < {self.renew_deadline} < {self.lease_duration}"
            )


def _micro_time(when: float | None = None) -> str:
    stamp = dt.datetime.fromtimestamp(time.time() if when is None else when, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing or LeaseTiming()
        self.on_lost = on_lost
        #: (holder, renewTime) last seen, and when (monotonic) it was first seen so.
        self._observed: tuple[str | None, str | None] | None = None
        self._observed_at = 0.0
        self._observed_duration = self.timing.lease_duration
        self._renewed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.leading = False

    # -- one attempt ---------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this process holds the Lease afterwards."""
        now = time.monotonic()
        lease = self.kube.get_lease(self.namespace, self.name)
        if lease is None:
            created = self.kube.create_lease(self._body(None, acquiring=True))
            if created:
                self._renewed_at = now
            return created
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        record = (holder, spec.get("renewTime"))
        if record != self._observed:
            self._observed, self._observed_at = record, now
            self._observed_duration = float(
                spec.get("leaseDurationSeconds") or self.timing.lease_duration
            )
        if (
            holder is not None
            and holder != self.identity
            and now < self._observed_at + self._observed_duration
        ):
            return False
        taken = self.kube.replace_lease(self._body(lease, acquiring=holder != self.identity))
        if taken:
            self._renewed_at = now
        return taken

    def _body(self, lease: Obj | None, *, acquiring: bool) -> Obj:
        now = _micro_time()
        old = (lease or {}).get("spec") or {}
        spec: Obj = {
            **old,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.timing.lease_duration)),
            "renewTime": now,
        }
        if acquiring:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0) + (
                1 if lease is not None else 0
            )
        metadata: Obj = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": spec,
        }

    # -- the loops -----------------------------------------------------------------------

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until this process holds the Lease (True) or ``stop`` is set (False)."""
        waiting_logged = False
        while stop is None or not stop.is_set():
            try:
                if self.try_acquire_or_renew():
                    self.leading = True
                    log.info(
                        "leading as %s (lease %s/%s)", self.identity, self.namespace, self.name
                    )
                    return True
                if not waiting_logged:
                    log.info(
                        "standing by: lease %s/%s is held by %s",
                        self.namespace,
                        self.name,
                        self._observed[0] if self._observed else "another replica",
                    )
                    waiting_logged = True
            except errors.KvolError as exc:
                log.warning("could not acquire lease %s/%s: %s", self.namespace, self.name, exc)
            if stop is not None:
                stop.wait(self.timing.retry_period)
            else:
                time.sleep(self.timing.retry_period)
        return False

    def start_renewing(self) -> None:
        """Renew in a background thread; on a lost Lease call ``on_lost`` once."""
        self._thread = threading.Thread(target=self._renew_loop, name="kvol-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.timing.retry_period):
            try:
                renewed = self.try_acquire_or_renew()
            except errors.KvolError as exc:
                log.warning("could not renew lease %s/%s: %s", self.namespace, self.name, exc)
                renewed = False
            if renewed:
                continue
            held_by_other = self._observed is not None and self._observed[0] not in (
                None,
                self.identity,
            )
            if held_by_other or time.monotonic() - self._renewed_at >= self.timing.renew_deadline:
                self.leading = False
                log.error(
                    "lost lease %s/%s (%s): stopping",
                    self.namespace,
                    self.name,
                    f"now held by {self._observed[0]}"
                    if held_by_other and self._observed
                    else f"not renewed for {self.timing.renew_deadline:g}s",
                )
                if self.on_lost is not None:
                    self.on_lost()
                return

    def release(self) -> None:
        """Stop renewing and hand the Lease over at once (a clean shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timing.retry_period + 5)
        if not self.leading:
            return
        self.leading = False
        try:
            lease = self.kube.get_lease(self.namespace, self.name)
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.identity:
                return
            # As client-go does: no holder, and a one-second duration for older readers.
            lease["spec"] = {
                **spec,
                "holderIdentity": None,
                "leaseDurationSeconds": 1,
                "renewTime": _micro_time(),
            }
            self.kube.replace_lease(lease)
            log.info("released lease %s/%s", self.namespace, self.name)
        except errors.KvolError as exc:
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)
