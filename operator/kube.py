"""The few Kubernetes API calls the operator makes itself, on plain dicts.

kopf watches and patches the custom resources; this module reads Secrets and Pods,
manages the PersistentVolume and claim of each Volume, and writes Volume status (the
operator is the only writer of status, and writes it as soon as it knows, not when a
handler returns). Responses are decoded as JSON dicts rather than client models: lighter,
and the same shape as the objects kopf hands to handlers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import kubernetes

from kvol import errors
from kvol.operator.resources import BACKENDS, GROUP, VERSION, VOLUMES

Obj = dict[str, Any]


def load_config(kubeconfig: str | None = None) -> kubernetes.client.ApiClient:
    """An API client from ``kubeconfig`` when one is named, else the in-cluster service
    account, else the default kubeconfig ($KUBECONFIG, ~/.kube/config)."""
    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig:
            raise kubernetes.config.ConfigException("a kubeconfig was named")
        kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    # Handlers run in a thread pool; let each have a connection.
    configuration.connection_pool_maxsize = 32
    return kubernetes.client.ApiClient(configuration)


def _translate(exc: kubernetes.client.ApiException, what: str) -> errors.KvolError:
    status = exc.status or 0
    reason = _reason(exc)
    if status == 404:
        return errors.NotFound(f"{what} not found")
    if status == 409:
        return errors.Conflict(f"{what}: {reason}")
    if status in (400, 422):
        return errors.InvalidArgument(f"{what} refused by the API server: {reason}")
    if status in (401, 403):
        return errors.PermissionDenied(f"{what}: not allowed: {reason}")
    # 429, 5xx and the rest: the API server will likely answer later.
    return errors.StoreUnavailable(f"{what}: API server answered {status}: {reason}")


def _reason(exc: kubernetes.client.ApiException) -> str:
    try:
        return str(json.loads(exc.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.reason)


class Kube:
    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.api = api
        self.core = kubernetes.client.CoreV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.coordination = kubernetes.client.CoordinationV1Api(api)
        self.storage = kubernetes.client.StorageV1Api(api)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Obj:
        try:
            response = fn(*args, _preload_content=False, **kwargs)
        except kubernetes.client.ApiException as exc:
            raise _translate(exc, what) from exc
        except OSError as exc:  # connection refused, reset, timeouts
            raise errors.StoreUnavailable(f"{what}: API server unreachable: {exc}") from exc
        except Exception as exc:
            # urllib3 errors do not share a base with OSError; treat all as transient.
            raise errors.StoreUnavailable(f"{what}: API server unreachable: {exc}") from exc
        data: Obj = json.loads(response.data)
        return data

    def _get_or_none(self, what: str, fn: Any, *args: Any) -> Obj | None:
        try:
            return self._call(what, fn, *args)
        except errors.NotFound:
            return None

    # -- custom resources -----------------------------------------------------------------

    def get_volume(self, namespace: str, name: str) -> Obj | None:
        return self._get_or_none(
            f"Volume {namespace}/{name}",
            self.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            VOLUMES,
            name,
        )

    def patch_volume_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> Obj:
        return self._call(
            f"status of Volume {namespace}/{name}",
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            VOLUMES,
            name,
            {"status": dict(status)},
        )

    def create_volume(self, body: Mapping[str, Any]) -> Obj:
        meta = body["metadata"]
        return self._call(
            f"Volume {meta['namespace']}/{meta['name']}",
            self.custom.create_namespaced_custom_object,
            GROUP,
            VERSION,
            meta["namespace"],
            VOLUMES,
            dict(body),
        )

    def delete_volume(self, namespace: str, name: str) -> None:
        try:
            self._call(
                f"Volume {namespace}/{name}",
                self.custom.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                VOLUMES,
                name,
            )
        except errors.NotFound:
            return

    def get_storage_class(self, name: str) -> Obj | None:
        return self._get_or_none(f"StorageClass {name}", self.storage.read_storage_class, name)

    def list_volumes(self) -> list[Obj]:
        data = self._call(
            "Volumes", self.custom.list_cluster_custom_object, GROUP, VERSION, VOLUMES
        )
        items: list[Obj] = data.get("items") or []
        return items

    def list_backends(self) -> list[Obj]:
        data = self._call(
            "VolumeBackends", self.custom.list_cluster_custom_object, GROUP, VERSION, BACKENDS
        )
        items: list[Obj] = data.get("items") or []
        return items

    def get_backend(self, name: str) -> Obj | None:
        return self._get_or_none(
            f"VolumeBackend {name}",
            self.custom.get_cluster_custom_object,
            GROUP,
            VERSION,
            BACKENDS,
            name,
        )

    def patch_backend_status(self, name: str, status: Mapping[str, Any]) -> Obj:
        return self._call(
            f"status of VolumeBackend {name}",
            self.custom.patch_cluster_custom_object_status,
            GROUP,
            VERSION,
            BACKENDS,
            name,
            {"status": dict(status)},
        )

    # -- core objects ---------------------------------------------------------------------

    def get_secret(self, namespace: str, name: str) -> Obj | None:
        return self._get_or_none(
            f"Secret {namespace}/{name}", self.core.read_namespaced_secret, name, namespace
        )

    def list_pods(self, namespace: str) -> list[Obj]:
        data = self._call(f"Pods in {namespace}", self.core.list_namespaced_pod, namespace)
        items: list[Obj] = data.get("items") or []
        return items

    def get_pv(self, name: str) -> Obj | None:
        return self._get_or_none(f"PersistentVolume {name}", self.core.read_persistent_volume, name)

    def create_pv(self, body: Mapping[str, Any]) -> Obj:
        name = body["metadata"]["name"]
        return self._call(
            f"PersistentVolume {name}", self.core.create_persistent_volume, dict(body)
        )

    def delete_pv(self, name: str) -> None:
        try:
            self._call(f"PersistentVolume {name}", self.core.delete_persistent_volume, name)
        except errors.NotFound:
            return

    def get_pvc(self, namespace: str, name: str) -> Obj | None:
        return self._get_or_none(
            f"PersistentVolumeClaim {namespace}/{name}",
            self.core.read_namespaced_persistent_volume_claim,
            name,
            namespace,
        )

    def create_pvc(self, body: Mapping[str, Any]) -> Obj:
        meta = body["metadata"]
        return self._call(
            f"PersistentVolumeClaim {meta['namespace']}/{meta['name']}",
            self.core.create_namespaced_persistent_volume_claim,
            meta["namespace"],
            dict(body),
        )

    def delete_pvc(self, namespace: str, name: str) -> None:
        try:
            self._call(
                f"PersistentVolumeClaim {namespace}/{name}",
                self.core.delete_namespaced_persistent_volume_claim,
                name,
                namespace,
            )
        except errors.NotFound:
            return

    # -- leader election ------------------------------------------------------------------

    def get_lease(self, namespace: str, name: str) -> Obj | None:
        return self._get_or_none(
            f"Lease {namespace}/{name}",
            self.coordination.read_namespaced_lease,
            name,
            namespace,
        )

    def create_lease(self, body: Mapping[str, Any]) -> bool:
        """Create a Lease; False when another replica created it first."""
        meta = body["metadata"]
        try:
            self._call(
                f"Lease {meta['namespace']}/{meta['name']}",
                self.coordination.create_namespaced_lease,
                meta["namespace"],
                dict(body),
            )
        except errors.Conflict:
            return False
        return True

    def replace_lease(self, body: Mapping[str, Any]) -> bool:
        """Replace a Lease at the resourceVersion in ``body``; False when it changed since."""
        meta = body["metadata"]
        try:
            self._call(
                f"Lease {meta['namespace']}/{meta['name']}",
                self.coordination.replace_namespaced_lease,
                meta["name"],
                meta["namespace"],
                dict(body),
            )
        except errors.Conflict:
            return False
        return True
