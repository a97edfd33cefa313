"""The one wrapper around every RPC: status codes, secret stripping, metrics, over a real
gRPC server on a unix socket."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from kvol import errors
from kvol.csi import errors as csi_errors
from kvol.csi.identity import IdentityService
from kvol.csi.proto import csi_pb2, csi_pb2_grpc
from kvol.csi.server import (
    STATUS_CODES,
    build_server,
    code_label,
    describe,
    socket_path,
    status_code,
)


def _all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _all_subclasses(sub)
    return found


def test_every_kvol_error_has_a_deliberate_code() -> None:
    listed = {cls for cls, _ in STATUS_CODES}
    for cls in _all_subclasses(errors.KvolError) | {errors.KvolError}:
        if cls.__module__.startswith("tests"):
            continue
        # Either listed itself, or covered by a listed base other than the catch-all.
        covering = [c for c in listed if issubclass(cls, c)]
        assert covering, f"{cls.__name__} has no gRPC code"
    assert status_code(errors.StoreUnavailable("x")) is grpc.StatusCode.UNAVAILABLE
    assert status_code(errors.InvalidPath("x")) is grpc.StatusCode.INVALID_ARGUMENT
    assert status_code(csi_errors.OperationPending("x")) is grpc.StatusCode.ABORTED
    assert status_code(csi_errors.Forbidden("x")) is grpc.StatusCode.PERMISSION_DENIED
    assert status_code(errors.CorruptData("x")) is grpc.StatusCode.DATA_LOSS
    assert status_code(errors.WriteBackFailed("x")) is grpc.StatusCode.UNAVAILABLE
    assert status_code(RuntimeError("bug")) is grpc.StatusCode.INTERNAL


def test_code_labels_match_the_go_names() -> None:
    assert code_label(grpc.StatusCode.OK) == "OK"
    assert code_label(grpc.StatusCode.INVALID_ARGUMENT) == "InvalidArgument"
    assert code_label(grpc.StatusCode.DEADLINE_EXCEEDED) == "DeadlineExceeded"


def test_secrets_are_stripped_from_the_log_line() -> None:
    request = csi_pb2.NodePublishVolumeRequest(
        volume_id="v", secrets={"password": "hunter2"}, volume_context={"volume": "data"}
    )
    line = describe(request)
    assert "hunter2" not in line
    assert "***stripped***" in line and '"volume": "data"' in line
    assert request.secrets["password"] == "hunter2"  # the request itself is untouched


def test_endpoint_must_be_a_unix_socket() -> None:
    assert socket_path("unix:///csi/csi.sock") == Path("/csi/csi.sock")
    for bad in ("tcp://127.0.0.1:1", "unix://relative/x", "/csi/csi.sock"):
        with pytest.raises(errors.InvalidArgument):
            socket_path(bad)


class FailingNode:
    """A Node servicer whose calls raise what the test asks."""

    def __init__(self) -> None:
        self.raise_next: BaseException | None = None

    def _answer(self, response: object) -> object:
        if self.raise_next is not None:
            exc, self.raise_next = self.raise_next, None
            raise exc
        return response

    def NodePublishVolume(self, request: object) -> object:
        return self._answer(csi_pb2.NodePublishVolumeResponse())

    def NodeUnpublishVolume(self, request: object) -> object:
        return self._answer(csi_pb2.NodeUnpublishVolumeResponse())

    def NodeGetVolumeStats(self, request: object) -> object:
        return self._answer(csi_pb2.NodeGetVolumeStatsResponse())

    def NodeGetCapabilities(self, request: object) -> object:
        return self._answer(csi_pb2.NodeGetCapabilitiesResponse())

    def NodeGetInfo(self, request: object) -> object:
        return self._answer(csi_pb2.NodeGetInfoResponse(node_id="n"))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FailingNode, grpc.Channel]]:
    node = FailingNode()
    sock = tmp_path / "csi.sock"
    server = build_server(
        f"unix://{sock}", {"Identity": IdentityService(), "Node": node}, driver_name="t.kvol.dev"
    )
    channel = grpc.insecure_channel(f"unix://{sock}")
    yield node, channel
    channel.close()
    server.stop(None)


def test_errors_become_status_codes_and_metrics(
    served: tuple[FailingNode, grpc.Channel], caplog: pytest.LogCaptureFixture
) -> None:
    node, channel = served
    stub = csi_pb2_grpc.NodeStub(channel)

    def count(code: str) -> float:
        value = REGISTRY.get_sample_value(
            "csi_plugin_operations_seconds_count",
            {
                "driver_name": "t.kvol.dev",
                "method_name": "/csi.v1.Node/NodePublishVolume",
                "grpc_status_code": code,
            },
        )
        return value or 0.0

    before_ok, before_unavailable = count("OK"), count("Unavailable")
    caplog.set_level(logging.INFO, logger="kvol.csi.server")
    stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(secrets={"k": "s3cr3t"}))
    node.raise_next = errors.StoreUnavailable("store is down")
    with pytest.raises(grpc.RpcError) as info:
        stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(secrets={"k": "s3cr3t"}))
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "store is down" in (info.value.details() or "")
    node.raise_next = ZeroDivisionError("a bug")
    with pytest.raises(grpc.RpcError) as info:
        stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest())
    assert info.value.code() is grpc.StatusCode.INTERNAL
    assert count("OK") == before_ok + 1
    assert count("Unavailable") == before_unavailable + 1
    lines = [r.getMessage() for r in caplog.records if "NodePublishVolume" in r.getMessage()]
    assert len(lines) == 3  # every call logged exactly once
    assert not any("s3cr3t" in line for line in lines)


def test_identity_answers(served: tuple[FailingNode, grpc.Channel]) -> None:
    _, channel = served
    identity = csi_pb2_grpc.IdentityStub(channel)
    info = identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert info.name == "csi.kvol.dev" and info.vendor_version
    caps = identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest())
    assert list(caps.capabilities) == []  # node-only: no Controller service
    assert identity.Probe(csi_pb2.ProbeRequest()).ready.value is True
