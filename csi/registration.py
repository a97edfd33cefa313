"""Registration with the kubelet and a liveness endpoint, served by ``kvol-csi`` itself.

The kubelet finds node plugins through sockets in its ``plugins_registry`` directory: it
calls ``GetInfo`` on ``<driver>-reg.sock`` (the plugin says it is a CSI plugin, its name,
where its CSI socket is as the kubelet sees it, and which versions it speaks), validates the
answer, registers the driver, and reports the outcome with ``NotifyRegistrationStatus``.
That is all node-driver-registrar does; doing it here saves a second container per node.

The messages are those of the kubelet's plugin-registration API (package
``pluginregistration``, ``pluginregistration.proto`` next to this module's protos). They
are built here from descriptors, so the plugin needs no generated code for them; a test
compiles the .proto and checks both agree.

The liveness endpoint answers ``GET /healthz`` with 200 while the CSI socket answers
``Probe`` with ready, and 503 otherwise, or once the kubelet has refused the registration:
a restarted container registers again, as with the sidecar.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from kvol.csi.proto import csi_pb2

log = logging.getLogger(__name__)

PACKAGE = "pluginregistration"
SERVICE = f"{PACKAGE}.Registration"
PLUGIN_TYPE = "CSIPlugin"
#: The CSI versions the plugin speaks, as the kubelet expects them listed.
SUPPORTED_VERSIONS = ("1.0.0",)

_F = descriptor_pb2.FieldDescriptorProto


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The plugin-registration API (v1) as a descriptor: the shape of pluginregistration.proto."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="kvol/csi/proto/pluginregistration.proto", package=PACKAGE, syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, int]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, label in fields:
            json_name = "".join(
                part if i == 0 else part.capitalize()
                for i, part in enumerate(field_name.split("_"))
            )
            msg.field.add(
                name=field_name, number=number, type=kind, label=label, json_name=json_name
            )

    optional, repeated = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    message(
        "PluginInfo",
        ("type", 1, _F.TYPE_STRING, optional),
        ("name", 2, _F.TYPE_STRING, optional),
        ("endpoint", 3, _F.TYPE_STRING, optional),
        ("supported_versions", 4, _F.TYPE_STRING, repeated),
    )
    message(
        "RegistrationStatus",
        ("plugin_registered", 1, _F.TYPE_BOOL, optional),
        ("error", 2, _F.TYPE_STRING, optional),
    )
    message("RegistrationStatusResponse")
    message("InfoRequest")
    service = proto.service.add(name="Registration")
    service.method.add(
        name="GetInfo", input_type=f".{PACKAGE}.InfoRequest", output_type=f".{PACKAGE}.PluginInfo"
    )
    service.method.add(
        name="NotifyRegistrationStatus",
        input_type=f".{PACKAGE}.RegistrationStatus",
        output_type=f".{PACKAGE}.RegistrationStatusResponse",
    )
    return proto


# A pool of our own: the default pool may already hold a generated copy of the same file.
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(file_descriptor())
InfoRequest: type[Message] = GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.InfoRequest"))
PluginInfo: type[Message] = GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.PluginInfo"))
RegistrationStatus: type[Message] = GetMessageClass(
    _POOL.FindMessageTypeByName(f"{PACKAGE}.RegistrationStatus")
)
RegistrationStatusResponse: type[Message] = GetMessageClass(
    _POOL.FindMessageTypeByName(f"{PACKAGE}.RegistrationStatusResponse")
)


def registration_socket(registration_dir: Path, driver_name: str) -> Path:
    return registration_dir / f"{driver_name}-reg.sock"


def _build(message_class: type[Message], **fields: Any) -> Message:
    """A message of a class made from a descriptor at run time.

    The protobuf stubs type ``Message``'s constructor without fields, so a class known only as
    ``type[Message]`` is called through a plain callable.
    """
    construct: Callable[..., Message] = message_class
    return construct(**fields)


@dataclass
class Registration:
    """The ``Registration`` service: what the kubelet learns about the plugin, and its verdict."""

    driver_name: str
    #: The CSI socket's path as the kubelet sees it (on the host, not in the container).
    kubelet_endpoint: str
    registered: threading.Event = field(default_factory=threading.Event)
    #: The kubelet's error when it refused the plugin; None while none was reported.
    refused: str | None = None

    def GetInfo(self, request: Any, context: grpc.ServicerContext) -> Message:
        log.info("kubelet asked for plugin info: %s at %s", self.driver_name, self.kubelet_endpoint)
        return _build(
            PluginInfo,
            type=PLUGIN_TYPE,
            name=self.driver_name,
            endpoint=self.kubelet_endpoint,
            supported_versions=list(SUPPORTED_VERSIONS),
        )

    def NotifyRegistrationStatus(self, request: Any, context: grpc.ServicerContext) -> Message:
        if request.plugin_registered:
            self.refused = None
            self.registered.set()
            log.info("registered with the kubelet as %s", self.driver_name)
        else:
            self.refused = request.error or "no reason given"
            self.registered.clear()
            log.error("the kubelet refused to register %s: %s", self.driver_name, self.refused)
        return RegistrationStatusResponse()


def _replace_stale_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    # Left by an earlier plugin process. Binding anew makes the kubelet see a new socket
    # and register again.
    path.unlink()


def serve_registration(registration: Registration, path: Path) -> grpc.Server:
    """A started gRPC server for ``registration`` on the unix socket ``path``."""
    _replace_stale_socket(path)
    handlers = {
        "GetInfo": grpc.unary_unary_rpc_method_handler(
            registration.GetInfo,
            request_deserializer=InfoRequest.FromString,
            response_serializer=PluginInfo.SerializeToString,
        ),
        "NotifyRegistrationStatus": grpc.unary_unary_rpc_method_handler(
            registration.NotifyRegistrationStatus,
            request_deserializer=RegistrationStatus.FromString,
            response_serializer=RegistrationStatusResponse.SerializeToString,
        ),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="kvol-csi-registration")
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"unix://{path}")
    server.start()
    os.chmod(path, 0o660)
    return server


def probe(endpoint: str, timeout: float = 5.0) -> tuple[bool, str]:
    """Call the CSI ``Probe`` on ``endpoint`` as the kubelet would: (healthy, why not)."""
    try:
        with grpc.insecure_channel(endpoint) as channel:
            call = channel.unary_unary(
                "/csi.v1.Identity/Probe",
                request_serializer=csi_pb2.ProbeRequest.SerializeToString,
                response_deserializer=csi_pb2.ProbeResponse.FromString,
            )
            response = call(csi_pb2.ProbeRequest(), timeout=timeout)
    except grpc.RpcError as exc:
        return False, f"Probe failed: {exc.code().name}: {exc.details()}"
    if response.HasField("ready") and not response.ready.value:
        return False, "the plugin is not ready"
    return True, ""


class HealthServer:
    """``GET /healthz`` for the liveness probe: the CSI socket's Probe and the kubelet's verdict."""

    def __init__(
        self, address: str, port: int, endpoint: str, registration: Registration | None
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/healthz":
                    self.send_error(404)
                    return
                healthy, why = outer.check()
                body = (b"ok" if healthy else why.encode()) + b"\n"
                self.send_response(200 if healthy else 503)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("healthz: " + format, *args)

        self.endpoint = endpoint
        self.registration = registration
        self.httpd = ThreadingHTTPServer((address, port), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="kvol-csi-healthz", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def check(self) -> tuple[bool, str]:
        if self.registration is not None and self.registration.refused is not None:
            return False, f"the kubelet refused the registration: {self.registration.refused}"
        healthy, why = probe(self.endpoint)
        if not healthy:
            log.warning("liveness check failed: %s", why)
        return healthy, why

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """kvol-csi's options for registering itself and for its liveness endpoint."""
    parser.add_argument(
        "--registration-dir",
        type=Path,
        default=None,
        help="the kubelet's plugins_registry directory as mounted here: register with the "
        "kubelet through it, without node-driver-registrar (default: off)",
    )
    parser.add_argument(
        "--kubelet-endpoint",
        default=None,
        help="the CSI socket's path as the kubelet sees it on the host, sent when registering "
        "(default: the path of --endpoint)",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=0,
        help="serve GET /healthz for a liveness probe on this port, without the livenessprobe "
        "sidecar (0: off, the default)",
    )
    parser.add_argument(
        "--health-address",
        default="0.0.0.0",
        help="address for the liveness endpoint (default: %(default)s)",
    )


@dataclass
class Running:
    """What :func:`start` started; :meth:`stop` ends it."""

    registration: Registration | None = None
    server: grpc.Server | None = None
    health: HealthServer | None = None

    def stop(self) -> None:
        if self.health is not None:
            self.health.stop()
        if self.server is not None:
            # gRPC removes the socket: the kubelet deregisters the driver until the next
            # plugin process binds a new one (its calls meanwhile fail and are retried).
            self.server.stop(grace=1).wait()


def start(args: argparse.Namespace, driver_name: str, endpoint: str, socket: Path) -> Running:
    """Start registration and the liveness endpoint as ``args`` ask; nothing when they do not."""
    running = Running()
    if args.registration_dir is not None:
        running.registration = Registration(
            driver_name=driver_name, kubelet_endpoint=args.kubelet_endpoint or str(socket)
        )
        path = registration_socket(args.registration_dir, driver_name)
        running.server = serve_registration(running.registration, path)
        log.info(
            "registration socket %s (kubelet endpoint %s)",
            path,
            running.registration.kubelet_endpoint,
        )
    if args.health_port:
        running.health = HealthServer(
            args.health_address, args.health_port, endpoint, running.registration
        ).start()
        log.info("liveness endpoint on %s:%d/healthz", args.health_address, running.health.port)
    return running
