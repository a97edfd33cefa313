"""The kopf handlers: thin, each calling the Reconciler and translating its errors once.

Handlers are registered into a registry by :func:`register` (not at import), with the
intervals of the operator's configuration. Creation, resumption and spec updates take
the fast path; a timer per object is the level-based loop that makes status converge
whatever events were missed (DESIGN: Kubernetes surfaces).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf
import kubernetes

from kvol import errors
from kvol.operator import metrics
from kvol.operator.kube import Kube, load_config
from kvol.operator.reconcile import ReconcileError, Reconciler, Settings, classify
from kvol.operator.registry import Backends
from kvol.operator.resources import BACKENDS, FINALIZER, GROUP, VERSION, VOLUMES

#: Who the Events say they come from (``kubectl describe``: From; reportingComponent).
REPORTING_COMPONENT = "kvol-operator"

log = logging.getLogger(__name__)

#: Progress and last-handled state live in annotations: status belongs to the operator.
_ANNOTATION_PREFIX = GROUP


@dataclass
class OperatorConfig:
    settings: Settings = field(default_factory=Settings)
    kubeconfig: str | None = None
    #: The API client of every call, ours and kopf's; made from ``kubeconfig`` when None.
    api: kubernetes.client.ApiClient | None = None
    #: Threads running handlers (store calls block).
    workers: int = 16
    #: Longest wait between retries of a failing reconciliation.
    max_backoff: float = 60.0
    metrics_port: int | None = 8080
    metrics_address: str = "0.0.0.0"


def backoff(retry: int, ceiling: float) -> float:
    """1, 2, 4, ... seconds up to ``ceiling``: quick first retries, patient later ones."""
    return float(min(ceiling, 2 ** min(retry, 16)))


def run_reconcile(kind: str, handler: str, delay: float, fn: Callable[[], object]) -> None:
    """Run one reconciliation, count and time it, and turn its failure into kopf's terms:
    a temporary error retried after ``delay`` (unless the failure names its own), or a
    permanent one."""
    started = time.perf_counter()
    result = "ok"
    try:
        fn()
    except ReconcileError as exc:
        if exc.retry:
            result = "retry"
            raise kopf.TemporaryError(
                f"{exc.reason}: {exc.message}", delay=exc.delay or delay
            ) from exc
        result = "failed"
        raise kopf.PermanentError(f"{exc.reason}: {exc.message}") from exc
    except errors.KvolError as exc:
        if classify(exc):
            result = "retry"
            raise kopf.TemporaryError(str(exc), delay=delay) from exc
        result = "failed"
        raise kopf.PermanentError(str(exc)) from exc
    except Exception:
        result = "error"
        raise
    finally:
        metrics.RECONCILES.labels(kind, handler, result).inc()
        metrics.RECONCILE_SECONDS.labels(kind, handler).observe(time.perf_counter() - started)


def connection_info(
    configuration: kubernetes.client.Configuration, *, trust_env: bool = False
) -> kopf.ConnectionInfo:
    """kopf's credentials from our client's configuration."""
    hook = configuration.refresh_api_key_hook
    if hook is not None:
        hook(configuration)  # an in-cluster token is re-read from its file
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (
        (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    )
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        trust_env=trust_env,
    )


def _post_event(obj: Any, type_: str, reason: str, message: str) -> None:
    kopf.event(obj, type=type_, reason=reason, message=message[:1024])


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Add every handler of the operator to ``registry``."""
    interval = config.settings.status_interval
    ceiling = config.max_backoff
    state: dict[str, Reconciler] = {}

    def rec() -> Reconciler:
        return state["reconciler"]

    def spread(**_: Any) -> float:
        # Objects seen together (at startup) spread their periodic passes over an interval.
        return random.uniform(interval / 2, interval)

    volumes = (GROUP, VERSION, VOLUMES)
    backends = (GROUP, VERSION, BACKENDS)

    clients: list[kubernetes.client.ApiClient] = []

    def api() -> kubernetes.client.ApiClient:
        if not clients:
            clients.append(config.api or load_config(config.kubeconfig))
        return clients[0]

    @kopf.on.startup(id="configure", registry=registry)
    def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
        """Every setting of the operator, in one place."""
        settings.posting.reporting_component = REPORTING_COMPONENT
        settings.posting.reporting_instance = os.environ.get("POD_NAME") or socket.gethostname()
        settings.posting.event_name_prefix = f"{REPORTING_COMPONENT}-"
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=_ANNOTATION_PREFIX
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=_ANNOTATION_PREFIX, key="last-handled-configuration"
        )
        # Our own Events say what happened; kopf's log lines would double the API calls.
        settings.posting.level = logging.WARNING
        settings.execution.max_workers = config.workers
        settings.execution.default_backoff = ceiling
        # Reconnect watches well before proxies cut idle connections.
        settings.watching.server_timeout = 270
        settings.watching.client_timeout = 300
        settings.networking.request_timeout = 30
        settings.networking.connect_timeout = 10
        kube = Kube(api())
        found = Backends(kube, operator_namespace=config.settings.operator_namespace)
        state["reconciler"] = Reconciler(kube, found, config.settings, _post_event)
        if config.metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(config.metrics_port, addr=config.metrics_address)
            logger.info(
                "metrics on http://%s:%d/metrics", config.metrics_address, config.metrics_port
            )

    @kopf.on.login(id="login", registry=registry)
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        # The same configuration as our own API client: in-cluster, else the kubeconfig
        # named on the command line; never the process's default client configuration.
        return connection_info(api().configuration, trust_env=settings.networking.trust_env)

    @kopf.on.cleanup(id="close", registry=registry)
    def close(**_: Any) -> None:
        if "reconciler" in state:
            rec().backends.close()

    @kopf.on.probe(id="volumes", registry=registry)
    def volumes_by_phase(**_: Any) -> dict[str, int]:
        return metrics.VOLUME_PHASES.counts()

    # -- Volume ----------------------------------------------------------------------------

    @kopf.on.resume(*volumes, id="apply", registry=registry)
    @kopf.on.create(*volumes, id="apply", registry=registry)
    @kopf.on.update(*volumes, id="apply", field="spec", registry=registry)
    def volume_apply(body: kopf.Body, retry: int, **_: Any) -> None:
        run_reconcile(
            "Volume", "apply", backoff(retry, ceiling), lambda: rec().reconcile_volume(body)
        )

    @kopf.timer(*volumes, id="status", interval=interval, initial_delay=spread, registry=registry)
    def volume_status(body: kopf.Body, **_: Any) -> None:
        # Timers have no retry count: a failed pass is retried at the next interval.
        run_reconcile("Volume", "status", interval, lambda: rec().refresh_volume(body))

    if config.settings.prune_interval > 0:
        # Checked every status interval against status.retention, in memory; a pass
        # (prune, collection, measurement) runs only when one is due.
        @kopf.timer(
            *volumes,
            id="retention",
            interval=min(interval, config.settings.prune_interval),
            initial_delay=spread,
            registry=registry,
        )
        def volume_retention(body: kopf.Body, **_: Any) -> None:
            if "reconciler" not in state or not rec().retention_due(body):
                return
            run_reconcile("Volume", "retention", interval, lambda: rec().retention_pass(body))

    @kopf.on.delete(*volumes, id="delete", registry=registry)
    def volume_delete(body: kopf.Body, retry: int, **_: Any) -> None:
        run_reconcile(
            "Volume", "delete", backoff(retry, ceiling), lambda: rec().delete_volume(body)
        )

    # -- dynamic provisioning ------------------------------------------------------------

    @kopf.on.event("", "v1", "persistentvolumeclaims", id="provision", registry=registry)
    def claim_seen(body: kopf.Body, type: str | None, **_: Any) -> None:
        # Events are not retried; a claim whose Volume could not be made is seen again
        # when the watch is re-listed, or when anything about it changes.
        if "reconciler" in state:
            run_reconcile(
                "PersistentVolumeClaim",
                "provision",
                interval,
                lambda: rec().provision_claim(body, deleted=type == "DELETED"),
            )

    # -- VolumeBackend ---------------------------------------------------------------------

    @kopf.on.event(*backends, id="observe", registry=registry)
    def backend_seen(body: kopf.Body, type: str | None, name: str, **_: Any) -> None:
        if "reconciler" not in state:
            return
        if type == "DELETED":
            rec().backends.forget(name)
        else:
            rec().backends.observe(dict(body))

    @kopf.on.resume(*backends, id="apply", registry=registry)
    @kopf.on.create(*backends, id="apply", registry=registry)
    @kopf.on.update(*backends, id="apply", field="spec", registry=registry)
    def backend_apply(body: kopf.Body, retry: int, **_: Any) -> None:
        run_reconcile(
            "VolumeBackend", "apply", backoff(retry, ceiling), lambda: rec().reconcile_backend(body)
        )

    @kopf.on.delete(*backends, id="delete", registry=registry)
    def backend_delete(body: kopf.Body, retry: int, **_: Any) -> None:
        run_reconcile(
            "VolumeBackend", "delete", backoff(retry, ceiling), lambda: rec().delete_backend(body)
        )

    @kopf.timer(*backends, id="status", interval=interval, initial_delay=spread, registry=registry)
    def backend_status(body: kopf.Body, **_: Any) -> None:
        run_reconcile(
            "VolumeBackend",
            "status",
            interval,
            lambda: rec().reconcile_backend(body, periodic=True),
        )
