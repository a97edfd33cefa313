"""Warning events on pods whose final commit waits: what they say, how often they are
posted, and that posting never holds up the caller."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvol.csi.events import (
    COMPONENT,
    MAX_ERROR_CHARS,
    REASON_FINAL_COMMIT_RETRYING,
    EventReporter,
    PodRef,
    RateLimiter,
    final_commit_event,
)
from kvol.errors import StoreUnavailable

POD = PodRef("team-a", "writer", "0c5e0d3a-uid")


def test_event_is_a_warning_on_the_pod_naming_the_volume_and_the_store_error() -> None:
    error = StoreUnavailable("connection refused by s3.example:9000")
    event = final_commit_event(POD, "results", error, "node-1", now=1_700_000_000)
    assert event["type"] == "Warning"
    assert event["reason"] == REASON_FINAL_COMMIT_RETRYING == "FinalCommitRetrying"
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": "team-a",
        "name": "writer",
        "uid": "0c5e0d3a-uid",
    }
    assert event["metadata"]["namespace"] == "team-a"
    assert event["metadata"]["name"].startswith("writer.")
    assert event["source"] == {"component": COMPONENT, "host": "node-1"}
    assert event["reportingComponent"] == "kvol-csi"
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2023-11-14T22:13:20Z"
    message = event["message"]
    assert "'results'" in message
    assert "connection refused by s3.example:9000" in message
    assert "finishes terminating once it lands" in message


def test_events_of_one_pod_get_distinct_names() -> None:
    names = {final_commit_event(POD, "v", "e", "n", 0)["metadata"]["name"] for _ in range(20)}
    assert len(names) == 20


def test_a_long_store_error_is_cut() -> None:
    event = final_commit_event(POD, "v", "x" * 10_000, "n", 0)
    assert "x" * (MAX_ERROR_CHARS - 3) + "..." in event["message"]
    assert len(event["message"]) < MAX_ERROR_CHARS + 300


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_allows_one_per_interval_per_key() -> None:
    clock = Clock()
    limiter = RateLimiter(60, clock=clock)
    assert limiter.allow("pod-a")
    assert not limiter.allow("pod-a")  # a kubelet retry moments later
    assert limiter.allow("pod-b")  # other pods are not held back
    clock.now += 59.9
    assert not limiter.allow("pod-a")
    clock.now += 0.2
    assert limiter.allow("pod-a")
    assert not limiter.allow("pod-a")


def test_rate_limiter_forgets_a_resolved_key_and_bounds_its_memory() -> None:
    clock = Clock()
    limiter = RateLimiter(60, capacity=3, clock=clock)
    assert limiter.allow("a")
    limiter.forget("a")
    assert limiter.allow("a")
    for key in ("b", "c", "d"):
        assert limiter.allow(key)
    # "a" was the least recently reported: dropped to keep at most three.
    assert limiter.allow("a")
    assert not limiter.allow("d")


def test_outside_a_cluster_reporting_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    reporter = EventReporter.in_cluster("node-1")
    assert not reporter.enabled
    assert not reporter.final_commit_retrying(POD, "v", StoreUnavailable("down"))
    assert reporter._thread is None


# -- against an HTTP server on loopback that answers like the API server -------------------


class ApiServer(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.arrived = threading.Condition()
        self.patch_status = 200
        self.hang = False
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def wait_requests(self, count: int, timeout: float = 10) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout), (
                self.requests
            )


class Handler(http.server.BaseHTTPRequestHandler):
    server: ApiServer

    def _handle(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.server.hang:
            self.server.release.wait(30)  # until the test ends
        status = self.server.patch_status if self.command == "PATCH" else 201
        with self.server.arrived:
            self.server.requests.append((self.command, self.path, dict(self.headers), body))
            self.server.arrived.notify_all()
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_POST = do_PATCH = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[ApiServer]:
    server = ApiServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def reporter_for(api: ApiServer, tmp_path: Path, interval: float = 0) -> EventReporter:
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    return EventReporter("node-1", api.url, token, limiter=RateLimiter(interval), timeout=2)


def test_first_report_creates_the_event_later_ones_count_on_it(
    api: ApiServer, tmp_path: Path
) -> None:
    reporter = reporter_for(api, tmp_path)
    assert reporter.final_commit_retrying(POD, "results", StoreUnavailable("refused"))
    api.wait_requests(1)
    method, path, headers, body = api.requests[0]
    assert (method, path) == ("POST", "/api/v1/namespaces/team-a/events")
    assert headers["Authorization"] == "Bearer secret-token"
    assert body["reason"] == "FinalCommitRetrying" and body["count"] == 1
    name = body["metadata"]["name"]

    assert reporter.final_commit_retrying(POD, "results", StoreUnavailable("timed out"))
    api.wait_requests(2)
    method, path, headers, patch = api.requests[1]
    assert (method, path) == ("PATCH", f"/api/v1/namespaces/team-a/events/{name}")
    assert headers["Content-Type"] == "application/merge-patch+json"
    assert patch["count"] == 2 and "timed out" in patch["message"]
    reporter.close()


def test_an_expired_event_is_created_anew(api: ApiServer, tmp_path: Path) -> None:
    reporter = reporter_for(api, tmp_path)
    reporter.final_commit_retrying(POD, "v", StoreUnavailable("down"))
    api.wait_requests(1)
    api.patch_status = 404
    reporter.final_commit_retrying(POD, "v", StoreUnavailable("down"))
    api.wait_requests(3)
    assert [r[0] for r in api.requests] == ["POST", "PATCH", "POST"]
    assert api.requests[2][3]["count"] == 1
    reporter.close()


def test_retries_within_the_interval_post_nothing(api: ApiServer, tmp_path: Path) -> None:
    reporter = reporter_for(api, tmp_path, interval=60)
    assert reporter.final_commit_retrying(POD, "v", StoreUnavailable("down"))
    for _ in range(10):
        assert not reporter.final_commit_retrying(POD, "v", StoreUnavailable("down"))
    other = PodRef("team-a", "other", "uid-2")
    assert reporter.final_commit_retrying(other, "v", StoreUnavailable("down"))
    api.wait_requests(2)
    time.sleep(0.2)
    assert [r[3]["involvedObject"]["name"] for r in api.requests] == ["writer", "other"]
    reporter.close()


def test_a_hung_api_server_never_holds_up_the_caller(api: ApiServer, tmp_path: Path) -> None:
    api.hang = True
    reporter = reporter_for(api, tmp_path)
    started = time.monotonic()
    for i in range(200):  # more than the queue holds: the rest are dropped
        reporter.final_commit_retrying(PodRef("ns", f"pod-{i}", f"uid-{i}"), "v", OSError("x"))
    assert time.monotonic() - started < 1.0


def test_a_pod_without_a_name_gets_no_event(api: ApiServer, tmp_path: Path) -> None:
    reporter = reporter_for(api, tmp_path)
    assert not reporter.final_commit_retrying(PodRef("ns", "", "uid"), "v", OSError("x"))
