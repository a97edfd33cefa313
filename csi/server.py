"""The gRPC server on the plugin's unix socket, and the one wrapper around every call.

Each RPC goes through :func:`_serve_one` exactly once: it runs the servicer method, turns
whatever it raised into a gRPC status through one table (:data:`STATUS_CODES`), logs the
call in one line with every ``csi_secret`` field stripped, and records
``csi_plugin_operations_seconds``. Servicer methods take the request and return the
response; they never touch the gRPC context.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from prometheus_client import Histogram

from kvol import errors
from kvol.csi import errors as csi_errors
from kvol.csi.mounts import LiveMount
from kvol.csi.proto import csi_pb2

log = logging.getLogger(__name__)

#: The CSI sidecars' metric (csi-lib-utils), so existing CSI dashboards work unchanged.
OPERATIONS_SECONDS = Histogram(
    "csi_plugin_operations_seconds",
    "Time taken by CSI operations of the plugin, by method and gRPC status code.",
    ["driver_name", "method_name", "grpc_status_code"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 25, 50, 120, 300, 600),
)

#: Error -> gRPC status code. Most specific first: the first matching class wins, so
#: every kvol error (and anything else: INTERNAL) has exactly one code.
STATUS_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (csi_errors.OperationPending, grpc.StatusCode.ABORTED),
    (csi_errors.Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (csi_errors.PublishedElsewhere, grpc.StatusCode.ALREADY_EXISTS),
    (csi_errors.NotPublished, grpc.StatusCode.NOT_FOUND),
    (LiveMount, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Conflict, grpc.StatusCode.ABORTED),
    (errors.VolumeBusy, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.CorruptData, grpc.StatusCode.DATA_LOSS),
    (errors.StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unsupported, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.StoreError, grpc.StatusCode.UNAVAILABLE),
    (errors.ReadOnly, grpc.StatusCode.FAILED_PRECONDITION),
    # The node's disk: the kubelet retries, and the changes stay in the copy meanwhile.
    (errors.WriteBackFailed, grpc.StatusCode.UNAVAILABLE),
    (errors.KvolError, grpc.StatusCode.INTERNAL),
)

STRIPPED = "***stripped***"

Handler = Callable[[Any], Message]


def status_code(exc: BaseException) -> grpc.StatusCode:
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def code_label(code: grpc.StatusCode) -> str:
    """A code as Go's grpc names it ("OK", "NotFound"), the label value CSI dashboards use."""
    if code is grpc.StatusCode.OK:
        return "OK"
    return "".join(word.capitalize() for word in code.name.split("_"))


SECRET_OPTION = "csi.v1.csi_secret"


def _is_secret(field: FieldDescriptor) -> bool:
    return any(
        option.full_name == SECRET_OPTION and bool(value)
        for option, value in field.GetOptions().ListFields()
    )


def _is_map(field: FieldDescriptor) -> bool:
    entry = field.message_type
    return entry is not None and entry.GetOptions().map_entry


def strip_secrets(message: Message) -> Message:
    """A copy of ``message`` with every field marked ``csi_secret`` blanked, at any depth."""
    clean = type(message)()
    clean.CopyFrom(message)
    _strip(clean)
    return clean


def _strip(message: Message) -> None:
    for field, value in message.ListFields():
        if _is_secret(field):
            if _is_map(field):
                for key in list(value):
                    value[key] = STRIPPED
            elif field.type == FieldDescriptor.TYPE_STRING:
                setattr(message, field.name, STRIPPED)
            else:
                message.ClearField(field.name)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if _is_map(field):
                if all(isinstance(item, Message) for item in value.values()):
                    for item in value.values():
                        _strip(item)
            elif field.is_repeated:
                for item in value:
                    _strip(item)
            else:
                _strip(value)


def describe(message: Message) -> str:
    """One-line JSON of a message with its secrets stripped, for the log."""
    return json_format.MessageToJson(
        strip_secrets(message), preserving_proto_field_name=True, indent=None, sort_keys=True
    )


def _serve_one(
    driver_name: str, method: str, handler: Handler
) -> Callable[[Message, grpc.ServicerContext], Message]:
    def call(request: Message, context: grpc.ServicerContext) -> Message:
        started = time.monotonic()
        code = grpc.StatusCode.OK
        failure: BaseException | None = None
        try:
            return handler(request)
        except Exception as exc:
            failure = exc
            code = status_code(exc)
        finally:
            elapsed = time.monotonic() - started
            OPERATIONS_SECONDS.labels(driver_name, method, code_label(code)).observe(elapsed)
            _log_call(method, request, code, elapsed, failure)
        context.abort(code, str(failure) or type(failure).__name__)
        raise AssertionError("context.abort returns only by raising")  # pragma: no cover

    return call


def _log_call(
    method: str,
    request: Message,
    code: grpc.StatusCode,
    elapsed: float,
    failure: BaseException | None,
) -> None:
    line = "%s %s -> %s in %.3fs"
    args: list[Any] = [method, describe(request), code_label(code), elapsed]
    if failure is None:
        log.info(line, *args)
    elif code is grpc.StatusCode.INTERNAL and not isinstance(failure, errors.KvolError):
        # Not a domain error: a bug or an unexpected system failure; keep its traceback.
        log.error(line + ": %s", *args, failure, exc_info=failure)
    else:
        log.warning(line + ": %s", *args, failure)


def generic_handler(
    service: ServiceDescriptor, servicer: object, driver_name: str
) -> grpc.GenericRpcHandler[Any, Any]:
    """Handlers for every method of ``service``, each wrapped by :func:`_serve_one`."""
    handlers = {}
    for method in service.methods:
        implementation = getattr(servicer, method.name, None)
        if implementation is None:
            raise TypeError(f"{type(servicer).__name__} does not implement {method.name}")
        full_name = f"/{service.full_name}/{method.name}"
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _serve_one(driver_name, full_name, implementation),
            request_deserializer=GetMessageClass(method.input_type).FromString,
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def socket_path(endpoint: str) -> Path:
    """The file of a ``unix:///path`` (or ``unix:/path``) endpoint."""
    parsed = urlparse(endpoint)
    if parsed.scheme != "unix" or not parsed.path or parsed.netloc:
        raise errors.InvalidArgument(
            f"endpoint must be unix:///absolute/path/to/csi.sock, not {endpoint!r}"
        )
    return Path(parsed.path)


def build_server(
    endpoint: str,
    services: dict[str, object],
    driver_name: str,
    max_workers: int = 16,
) -> grpc.Server:
    """A started gRPC server on ``endpoint`` serving ``services`` (by CSI service name)."""
    path = socket_path(endpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise errors.InvalidArgument(f"{path} exists and is not a socket")
        path.unlink()  # left by an earlier run of the plugin
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="kvol-csi")
    )
    for name, servicer in services.items():
        descriptor = csi_pb2.DESCRIPTOR.services_by_name[name]
        server.add_generic_rpc_handlers((generic_handler(descriptor, servicer, driver_name),))
    server.add_insecure_port(f"unix://{path}")
    server.start()
    os.chmod(path, 0o660)
    return server
