"""How long content no commit refers to is kept: the numbers the renewal protocol
(kvol.content) and garbage collection (kvol.content_gc) share. A module of its own, so
that the command line can state them in its help without loading either."""

from __future__ import annotations

#: An object not known to be younger than this (store clock) is renewed before a commit
#: publishes it; half of the shortest grace garbage collection accepts.
REFRESH_AFTER_SECONDS = 1800.0
#: Objects younger than this are never collected: a commit may be about to publish them.
#: Never below :func:`shortest_grace`.
DEFAULT_GC_GRACE_SECONDS = 3600.0


def shortest_grace(refresh_after: float = REFRESH_AFTER_SECONDS) -> float:
    """The shortest grace garbage collection may use: a renewal's threshold, plus as long
    again for the publish that follows it (see the renewal protocol in kvol.content)."""
    return 2 * refresh_after
