"""The final commit of a copy whose pod is going.

Unpublishing removes a copy only after this commit succeeded. While it cannot be made
(an unreachable store, files that keep changing) the call fails and the kubelet retries;
a Warning event on the pod says why it stays Terminating.
"""

from __future__ import annotations

from kvol.csi.events import EventReporter
from kvol.csi.podinfo import pod_ref
from kvol.csi.publisher import Live
from kvol.errors import KvolError, StaleBase

#: Final commits retried this many times when files changed while they were read.
FINAL_COMMIT_ATTEMPTS = 3


def final_commit(live: Live) -> int | None:
    """Commit everything of the copy; returns the new seq (None: nothing to commit)."""
    if live.pub.readonly:
        return None
    seq = None
    for _ in range(FINAL_COMMIT_ATTEMPTS):
        try:
            result = live.wc.commit()
        except StaleBase:
            # The volume's retained history now begins after this copy's base. The
            # pod is gone, so nobody sees its files change: bring the copy up to date
            # (a reload keeps its changes) and publish them on top of the head.
            live.wc.reload()
            result = live.wc.commit()
        seq = result.seq if result.seq is not None else seq
        if not result.deferred:
            return seq
    raise KvolError(
        f"files kept changing during the final commit of {live.pub.target_path}: "
        f"{', '.join(result.deferred[:5])}; will retry"
    )


def final_commit_or_report(live: Live, events: EventReporter) -> int | None:
    """The final commit; when it fails, a Warning event on the pod (best effort, never
    blocking) says why it stays Terminating, before the error goes to the kubelet."""
    try:
        return final_commit(live)
    except Exception as exc:
        events.final_commit_retrying(pod_ref(live.pub), live.pub.name, exc)
        raise
