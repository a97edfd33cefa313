"""Kubernetes Events the node plugin posts on pods, best effort.

A pod whose final commit cannot land (the store is down or refuses writes) stays
Terminating until it does: the kubelet retries NodeUnpublishVolume and the plugin refuses
to drop the working copy. Without a word, that looks like a hung pod, so the plugin posts
a Warning event on it saying which volume waits for which store error.

Posting must never delay or fail a CSI call: events go through a bounded queue to one
background thread that talks to the API server with a short timeout, using the pod's
service-account credentials. Outside a cluster (no token mounted) reporting is off. One
event per pod at most every :data:`MIN_INTERVAL` seconds: later reports within that time
are dropped, and a report after it updates the same event (its count, like the kubelet's
"x3 over 2m").
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import queue
import secrets
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

log = logging.getLogger(__name__)

COMPONENT = "kvol-csi"
REASON_FINAL_COMMIT_RETRYING = "FinalCommitRetrying"
#: At most one event per pod this often (the kubelet retries an unpublish every few
#: seconds at first; one line a minute says the same without flooding the pod's events).
MIN_INTERVAL = 60.0
#: Seconds one API request may take; the background thread then moves on.
REQUEST_TIMEOUT = 5.0
#: Events waiting to be posted; more are dropped (the API server is slow or down).
QUEUE_SIZE = 64
#: Pods remembered for rate limiting and counting; the oldest is forgotten first.
MAX_TRACKED = 1024
#: The API server keeps messages short; an error text longer than this is cut.
MAX_ERROR_CHARS = 600

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str = ""


def _timestamp(now: float) -> str:
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def final_commit_message(volume: str, error: BaseException | str) -> str:
    text = str(error) or type(error).__name__
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 3] + "..."
    return (
        f"the final commit of kvol volume {volume!r} failed: {text}. Nothing is lost: the "
        "working copy is kept and the commit is retried; the pod finishes terminating once "
        "it lands."
    )


def final_commit_event(
    pod: PodRef, volume: str, error: BaseException | str, node: str, now: float
) -> dict[str, Any]:
    """A core/v1 Event (Warning, on ``pod``) saying the final commit of ``volume`` waits."""
    stamp = _timestamp(now)
    involved = {"apiVersion": "v1", "kind": "Pod", "namespace": pod.namespace, "name": pod.name}
    if pod.uid:
        involved["uid"] = pod.uid
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            # Named like the kubelet's events: the object, then something unique.
            "name": f"{pod.name}.{secrets.token_hex(8)}",
            "namespace": pod.namespace,
        },
        "involvedObject": involved,
        "type": "Warning",
        "reason": REASON_FINAL_COMMIT_RETRYING,
        "message": final_commit_message(volume, error),
        "source": {"component": COMPONENT, "host": node},
        "reportingComponent": COMPONENT,
        "reportingInstance": node,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class RateLimiter:
    """Whether a key may be reported now: at most once per ``interval`` seconds each.
    Remembers at most ``capacity`` keys (the least recently reported go first)."""

    def __init__(
        self,
        interval: float = MIN_INTERVAL,
        capacity: int = MAX_TRACKED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.capacity = capacity
        self.clock = clock
        self._last: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                return False
            self._last[key] = now
            self._last.move_to_end(key)
            while len(self._last) > self.capacity:
                self._last.popitem(last=False)
            return True

    def forget(self, key: str) -> None:
        with self._lock:
            self._last.pop(key, None)


@dataclass
class _Posted:
    name: str
    count: int


class EventReporter:
    """Posts events to the API server at ``api_url`` from one background thread.

    ``enabled=False`` (outside a cluster) makes every report a no-op.
    """

    def __init__(
        self,
        node: str,
        api_url: str = "",
        token_path: Path | None = None,
        ca_path: Path | None = None,
        *,
        enabled: bool = True,
        limiter: RateLimiter | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.node = node
        self.api_url = api_url.rstrip("/")
        self.token_path = token_path
        self.enabled = enabled and bool(api_url)
        self.limiter = limiter or RateLimiter()
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None
        if self.enabled and self.api_url.startswith("https://"):
            self._context = ssl.create_default_context(
                cafile=str(ca_path) if ca_path is not None else None
            )
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(QUEUE_SIZE)
        # Written only by the worker thread: which event each pod got, to count repeats.
        self._posted: OrderedDict[str, _Posted] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @classmethod
    def in_cluster(cls, node: str) -> EventReporter:
        """From the pod's service account and the API server's service address; off when
        either is missing (outside a cluster, or the token is not mounted)."""
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        token = SERVICE_ACCOUNT_DIR / "token"
        if not host or not token.is_file():
            log.info("not in a cluster with a service-account token: events are off")
            return cls(node, enabled=False)
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        return cls(node, f"https://{host}:{port}", token, SERVICE_ACCOUNT_DIR / "ca.crt")

    # -- what the node service calls ------------------------------------------------------

    def final_commit_retrying(self, pod: PodRef, volume: str, error: BaseException) -> bool:
        """Report that ``pod``'s final commit of ``volume`` failed and will be retried.
        Returns at once; False when nothing was queued (off, rate-limited, queue full)."""
        if not self.enabled or not pod.name or not pod.namespace:
            return False
        key = pod.uid or f"{pod.namespace}/{pod.name}"
        if not self.limiter.allow(key):
            return False
        event = final_commit_event(pod, volume, error, self.node, time.time())
        self._ensure_thread()
        try:
            self._queue.put_nowait((key, event))
        except queue.Full:
            log.warning("event for pod %s/%s dropped: the queue is full", pod.namespace, pod.name)
            return False
        return True

    def resolved(self, pod: PodRef) -> None:
        """The pod's trouble is over: a new one gets an event at once."""
        self.limiter.forget(pod.uid or f"{pod.namespace}/{pod.name}")

    def close(self, timeout: float = 1.0) -> None:
        """Stop the background thread, giving queued events ``timeout`` seconds."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    # -- the background thread --------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kvol-events", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            key, event = item
            try:
                self._post(key, event)
            except Exception as exc:
                # Best effort: the pod's events are a courtesy; the plugin's log has it all.
                log.warning(
                    "could not post event %s on pod %s/%s: %s",
                    event["reason"],
                    event["involvedObject"]["namespace"],
                    event["involvedObject"]["name"],
                    exc,
                )

    def _post(self, key: str, event: dict[str, Any]) -> None:
        namespace = event["metadata"]["namespace"]
        base = f"{self.api_url}/api/v1/namespaces/{quote(namespace, safe='')}/events"
        previous = self._posted.get(key)
        if previous is not None:
            patch = {
                "count": previous.count + 1,
                "lastTimestamp": event["lastTimestamp"],
                "message": event["message"],
            }
            try:
                self._request(
                    "PATCH",
                    f"{base}/{quote(previous.name, safe='')}",
                    patch,
                    "application/merge-patch+json",
                )
                previous.count += 1
                self._posted.move_to_end(key)
                return
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
                # The event expired (the API server keeps them about an hour): a new one.
        self._request("POST", base, event, "application/json")
        self._posted[key] = _Posted(event["metadata"]["name"], 1)
        self._posted.move_to_end(key)
        while len(self._posted) > MAX_TRACKED:
            self._posted.popitem(last=False)

    def _request(self, method: str, url: str, body: dict[str, Any], content_type: str) -> None:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if self.token_path is not None:
            # Read each time: projected tokens are rotated on disk.
            headers["Authorization"] = f"Bearer {self.token_path.read_text().strip()}"
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers=headers, method=method
        )
        with urllib.request.urlopen(request, timeout=self.timeout, context=self._context):
            pass
