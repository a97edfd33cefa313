"""CSI Identity service: who the plugin is and whether it is ready."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.wrappers_pb2 import BoolValue

from kvol.csi.proto import csi_pb2

DRIVER_NAME = "csi.kvol.dev"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kvol")
    except PackageNotFoundError:  # running from a checkout without an install
        return "0.0.0"


class IdentityService:
    """Node-only plugin: it advertises no Controller service (volumes are created by the
    operator or the CLI, never by a CSI provisioner)."""

    def __init__(self, driver_name: str = DRIVER_NAME, ready: Callable[[], bool] | None = None):
        self.driver_name = driver_name
        self._ready = ready or (lambda: True)

    def GetPluginInfo(self, request: csi_pb2.GetPluginInfoRequest) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name=self.driver_name, vendor_version=_version())

    def GetPluginCapabilities(
        self, request: csi_pb2.GetPluginCapabilitiesRequest
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=[])

    def Probe(self, request: csi_pb2.ProbeRequest) -> csi_pb2.ProbeResponse:
        return csi_pb2.ProbeResponse(ready=BoolValue(value=self._ready()))
