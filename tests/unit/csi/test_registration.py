"""kvol-csi's own kubelet registration and liveness endpoint, over real unix sockets and HTTP.

The client side speaks with messages compiled from pluginregistration.proto by protoc, not
with the plugin's own descriptors, so the two are checked against each other on the wire.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from kvol.csi import registration
from kvol.csi.identity import IdentityService
from kvol.csi.server import build_server
from tests.tools import REPO, stop_process

PROTO = REPO / "csi" / "proto" / "pluginregistration.proto"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorProto:
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("protoc") / "set.pb"
    code = protoc.main(["protoc", f"-I{PROTO.parent}", f"--descriptor_set_out={out}", PROTO.name])
    assert code == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (proto,) = files.file
    return proto


def kubelet_messages(proto: descriptor_pb2.FileDescriptorProto) -> dict[str, type[Message]]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {
        m.name: GetMessageClass(pool.FindMessageTypeByName(f"pluginregistration.{m.name}"))
        for m in proto.message_type
    }


def test_descriptors_match_the_proto(compiled: descriptor_pb2.FileDescriptorProto) -> None:
    ours = registration.file_descriptor()
    assert ours.package == compiled.package == "pluginregistration"
    assert list(ours.message_type) == list(compiled.message_type)
    services = [descriptor_pb2.ServiceDescriptorProto() for _ in compiled.service]
    for copy, service in zip(services, compiled.service, strict=True):
        copy.CopyFrom(service)
        for method in copy.method:
            method.ClearField("options")  # "{}" bodies in the .proto: empty, meaningless
    assert list(ours.service) == services


def _call(channel: grpc.Channel, method: str, request: Message, reply: type[Message]) -> Message:
    rpc = channel.unary_unary(
        f"/pluginregistration.Registration/{method}",
        request_serializer=type(request).SerializeToString,
        response_deserializer=reply.FromString,
    )
    result: Message = rpc(request, timeout=5)
    return result


def test_kubelet_learns_the_plugin_and_reports_its_verdict(
    tmp_path: Path, compiled: descriptor_pb2.FileDescriptorProto
) -> None:
    msgs = kubelet_messages(compiled)
    reg = registration.Registration(
        "csi.kvol.dev", "/var/lib/kubelet/plugins/csi.kvol.dev/csi.sock"
    )
    path = registration.registration_socket(tmp_path / "plugins_registry", "csi.kvol.dev")
    server = registration.serve_registration(reg, path)
    try:
        assert path.name == "csi.kvol.dev-reg.sock"
        with grpc.insecure_channel(f"unix://{path}") as channel:
            info: Any = _call(channel, "GetInfo", msgs["InfoRequest"](), msgs["PluginInfo"])
            assert info.type == "CSIPlugin"
            assert info.name == "csi.kvol.dev"
            assert info.endpoint == "/var/lib/kubelet/plugins/csi.kvol.dev/csi.sock"
            assert list(info.supported_versions) == ["1.0.0"]
            status = msgs["RegistrationStatus"]
            reply = msgs["RegistrationStatusResponse"]
            _call(channel, "NotifyRegistrationStatus", status(plugin_registered=True), reply)
            assert reg.registered.is_set() and reg.refused is None
            _call(channel, "NotifyRegistrationStatus", status(error="version 9 only"), reply)
            assert not reg.registered.is_set()
            assert reg.refused == "version 9 only"
    finally:
        server.stop(grace=None)


def test_stale_socket_is_replaced_and_other_files_are_kept(tmp_path: Path) -> None:
    reg = registration.Registration("csi.kvol.dev", "/x/csi.sock")
    path = tmp_path / "csi.kvol.dev-reg.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    server = registration.serve_registration(reg, path)
    server.stop(grace=None)
    other = tmp_path / "other-reg.sock"
    other.write_text("not a socket")
    with pytest.raises(FileExistsError):
        registration.serve_registration(reg, other)
    assert other.read_text() == "not a socket"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def csi_socket(tmp_path: Path) -> Iterator[tuple[str, list[bool]]]:
    ready = [True]
    endpoint = f"unix://{tmp_path / 'csi.sock'}"
    server = build_server(
        endpoint, {"Identity": IdentityService(ready=lambda: ready[0])}, driver_name="csi.kvol.dev"
    )
    yield endpoint, ready
    server.stop(grace=None)


def test_healthz_follows_probe_and_the_kubelets_verdict(
    csi_socket: tuple[str, list[bool]],
) -> None:
    endpoint, ready = csi_socket
    reg = registration.Registration("csi.kvol.dev", "/x/csi.sock")
    health = registration.HealthServer("127.0.0.1", 0, endpoint, reg).start()
    url = f"http://127.0.0.1:{health.port}/healthz"
    try:
        assert _get(url) == (200, "ok\n")
        ready[0] = False
        code, body = _get(url)
        assert code == 503 and "not ready" in body
        ready[0] = True
        reg.refused = "no such version"
        code, body = _get(url)
        assert code == 503 and "no such version" in body
        reg.refused = None
        assert _get(url)[0] == 200
        assert _get(f"http://127.0.0.1:{health.port}/other")[0] == 404
    finally:
        health.stop()


def test_healthz_fails_when_the_csi_socket_does_not_answer(tmp_path: Path) -> None:
    health = registration.HealthServer(
        "127.0.0.1", 0, f"unix://{tmp_path / 'gone.sock'}", None
    ).start()
    try:
        code, body = _get(f"http://127.0.0.1:{health.port}/healthz")
        assert code == 503 and "Probe failed: UNAVAILABLE" in body
    finally:
        health.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_kvol_csi_registers_itself_and_serves_healthz(
    tmp_path: Path, compiled: descriptor_pb2.FileDescriptorProto
) -> None:
    msgs = kubelet_messages(compiled)
    store = tmp_path / "store"
    store.mkdir()
    port = _free_port()
    registry = tmp_path / "plugins_registry"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvol.csi.main",
            f"--endpoint=unix://{tmp_path / 'csi.sock'}",
            f"--state-dir={tmp_path / 'state'}",
            f"--store=file://{store}",
            "--layout=plain",
            f"--registration-dir={registry}",
            "--kubelet-endpoint=/var/lib/kubelet/plugins/csi.kvol.dev/csi.sock",
            f"--health-port={port}",
            "--health-address=127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    )
    try:
        path = registry / "csi.kvol.dev-reg.sock"
        deadline = time.monotonic() + 60
        while not path.exists():
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "no registration socket after 60 s"
            time.sleep(0.1)
        with grpc.insecure_channel(f"unix://{path}") as channel:
            info: Any = _call(channel, "GetInfo", msgs["InfoRequest"](), msgs["PluginInfo"])
        assert (info.type, info.name) == ("CSIPlugin", "csi.kvol.dev")
        assert info.endpoint == "/var/lib/kubelet/plugins/csi.kvol.dev/csi.sock"
        assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    finally:
        stop_process(process, signal.SIGTERM)
    output = process.communicate()[0].decode()
    assert process.returncode == 0, output
    assert "registration socket" in output
    # A stopped plugin is deregistered: the kubelet sees its socket go.
    assert not (registry / "csi.kvol.dev-reg.sock").exists()
