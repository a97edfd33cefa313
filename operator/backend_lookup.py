"""A Volume's backend and its store, found through the registry, with what goes wrong on
the way told as reconciliation failures (a condition reason, whether to retry)."""

from __future__ import annotations

from kvol import errors
from kvol.operator.failures import ReconcileError, classify
from kvol.operator.registry import Backend, Backends
from kvol.store import Store


def find_backend(backends: Backends, name: str) -> Backend:
    """The backend ``name``, or the default one when ``name`` is empty."""
    try:
        return backends.get(name) if name else backends.default()
    except errors.NotFound as exc:
        raise ReconcileError("BackendNotFound", str(exc), retry=True) from exc
    except errors.InvalidArgument as exc:
        raise ReconcileError("BackendInvalid", str(exc), retry=True) from exc
    except errors.KvolError as exc:
        raise ReconcileError("APIError", str(exc), retry=classify(exc)) from exc


def reachable_store(backends: Backends, backend: Backend) -> Store:
    """The backend's store, once it answers."""
    try:
        return backends.probe(backend)
    except errors.InvalidArgument as exc:
        raise ReconcileError("BackendInvalid", str(exc), retry=True) from exc
    except errors.NotFound as exc:  # its Secret
        raise ReconcileError("BackendCredentials", str(exc), retry=True) from exc
    except errors.KvolError as exc:
        raise ReconcileError(
            "BackendUnreachable", f"backend {backend.name}: {exc}", retry=True
        ) from exc
