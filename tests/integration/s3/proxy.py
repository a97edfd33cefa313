"""A small HTTP proxy on loopback that forwards to a real S3 server and injects faults.

It is a test tool, not a stand-in for the server: every request that is not failed on
purpose reaches MinIO unchanged (the Host header too, so signatures still verify), and
MinIO's answer comes back unchanged. Faults it can inject, each for requests matching a
predicate:

* an error status (503 Slow Down, 429, 500) instead of forwarding;
* a delay before forwarding (slow server);
* a lost answer: forward, let the server act, then drop the connection unanswered;
* a server that ignores ``If-None-Match: *``: a 412 for a conditional PUT becomes 200.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Match = Callable[["Seen"], bool]

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]

    @property
    def conditional(self) -> bool:
        return self.method == "PUT" and self.headers.get("if-none-match") == "*"


def every(_: Seen) -> bool:
    return True


@dataclass
class _Rule:
    kind: str
    match: Match
    times: int | None  # None: for ever
    status: int = 503
    seconds: float = 0.0

    def take(self, seen: Seen) -> bool:
        if self.times == 0 or not self.match(seen):
            return False
        if self.times is not None:
            self.times -= 1
        return True


@dataclass
class Faults:
    """What the proxy does to the next requests; thread-safe, changeable during a test."""

    rules: list[_Rule] = field(default_factory=list)
    ignore_conditional: bool = False
    #: Called with each request before it is handled (a test may stop the server here).
    on_request: Callable[[Seen], None] | None = None
    seen: list[Seen] = field(default_factory=list)
    injected: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, times: int | None, status: int = 503, match: Match = every) -> None:
        with self.lock:
            self.rules.append(_Rule("fail", match, times, status=status))

    def delay(self, seconds: float, times: int | None = None, match: Match = every) -> None:
        with self.lock:
            self.rules.append(_Rule("delay", match, times, seconds=seconds))

    def lose_answer(self, times: int | None, match: Match = every) -> None:
        with self.lock:
            self.rules.append(_Rule("lose", match, times))

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.ignore_conditional = False

    def _decide(self, seen: Seen) -> list[_Rule]:
        with self.lock:
            self.seen.append(seen)
            taken = [rule for rule in self.rules if rule.take(seen)]
            for rule in taken:
                self.injected[rule.kind] = self.injected.get(rule.kind, 0) + 1
            return taken


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        return None

    def _handle(self) -> None:
        faults = self.server.faults
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        if faults.on_request is not None:
            faults.on_request(seen)
        rules = faults._decide(seen)
        for rule in rules:
            if rule.kind == "delay":
                time.sleep(rule.seconds)
        failing = next((r for r in rules if r.kind == "fail"), None)
        if failing is not None:
            self._answer(
                failing.status, {"Content-Type": "application/xml"}, _error(failing.status)
            )
            return
        try:
            status, headers, answer = self._forward(body)
        except OSError:
            self._answer(502, {}, b"")
            return
        if any(r.kind == "lose" for r in rules):
            # The server acted on the request; its answer never arrives.
            self.close_connection = True
            self.connection.close()
            return
        if status == 412 and seen.conditional and faults.ignore_conditional:
            status, answer = 200, b""
            headers = {"ETag": '"0"'}
        self._answer(status, headers, answer)

    def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    upstream.putheader(name, value)
            upstream.endheaders(body if body else None)
            response = upstream.getresponse()
            answer = response.read()
            headers = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
            return response.status, headers, answer
        finally:
            upstream.close()

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        sent_length = False
        for name, value in headers.items():
            if name.lower() == "content-length":
                sent_length = True
            self.send_header(name, value)
        if not sent_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


def _error(status: int) -> bytes:
    code = {503: "SlowDown", 429: "TooManyRequests", 500: "InternalError"}.get(status, "Error")
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>injected by the test proxy</Message></Error>"
    ).encode()


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream_port: int, faults: Faults) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream_port = upstream_port
        self.faults = faults


@dataclass
class Proxy:
    port: int
    faults: Faults

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def fault_proxy(upstream_port: int) -> Iterator[Proxy]:
    """A proxy to ``127.0.0.1:upstream_port``; serve until the block ends."""
    faults = Faults()
    server = _ProxyServer(upstream_port, faults)
    thread = threading.Thread(target=server.serve_forever, name="s3-fault-proxy", daemon=True)
    thread.start()
    try:
        yield Proxy(server.server_address[1], faults)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
