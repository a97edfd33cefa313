"""How a reconciliation fails: a condition reason, and whether retrying can help.

The kopf layer (handlers.py) turns a :class:`ReconcileError` into a temporary or a
permanent error; the reconcilers record its reason in the object's conditions.
"""

from __future__ import annotations

from kvol import errors


class ReconcileError(Exception):
    """A reconciliation that could not finish: ``reason`` goes into conditions."""

    def __init__(self, reason: str, message: str, *, retry: bool, delay: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry = retry
        self.delay = delay


def classify(exc: errors.KvolError) -> bool:
    """Whether retrying can help: a store or API server that is down, a missing backend or
    Secret, refused credentials (a Secret can be fixed). Bad input never gets better."""
    if exc.retryable:
        return True
    return isinstance(exc, errors.NotFound | errors.StoreError)
