"""The read-only snapshots under this node's copies: which one a new copy goes on, how
long one stays after its last copy went (warm, for the volume's next pod), and keeping
the content cache within its limit.

One lock covers choosing, recording and dropping snapshots, so a snapshot is never
dropped between a publish choosing it and recording it. Building one (it may download)
and removing one (O(files)) run outside it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

from kvol import fsops
from kvol.csi import mounts
from kvol.csi.mounts import MountError
from kvol.csi.podinfo import mount_group
from kvol.csi.state import Publication, StateFile
from kvol.errors import CorruptData, KvolError
from kvol.overlay import Lower, Lowers, lower_family
from kvol.repo import Repo

log = logging.getLogger(__name__)

#: Longest wait between two passes of the janitor (warm snapshots, the cache's limit).
JANITOR_INTERVAL = 60.0


class Snapshots:
    """Chooses, keeps warm and drops the snapshots (lowers) this node's copies go on."""

    def __init__(self, lowers: Lowers, state: StateFile, keep_warm_seconds: float) -> None:
        self.lowers = lowers
        self.state = state
        self.keep_warm_seconds = keep_warm_seconds
        self._lock = threading.Lock()
        # The janitor drops expired warm snapshots and trims the content cache.
        self._janitor: threading.Thread | None = None
        self._janitor_wake = threading.Event()
        self._janitor_stop = threading.Event()

    # -- choosing and releasing --------------------------------------------------------

    def lower_for(self, pub: Publication, repo: Repo, reuse_within: int) -> Lower:
        """The snapshot under this publication, recorded in the state before it is used:
        the one it recorded, else the volume's newest here if at most ``reuse_within``
        commits behind the head (the copy reloads the commits after it), else a new one.
        """
        if pub.lower is not None:
            volume_id, _, seq = pub.lower.partition("/")
            found = self.lowers.get(volume_id, int(seq))
            if found is None:
                raise CorruptData(f"snapshot {pub.lower} of {pub.target_path} is missing")
            return found
        head = repo.head()
        group = mount_group(pub)
        family = lower_family(repo.volume_id, group)
        for _ in range(3):
            with self._lock:
                newest = self.lowers.newest(family, at_most=head)
                if newest is not None and head - newest.seq <= reuse_within:
                    self.state.put(replace(pub, lower=newest.key))
                    return newest
            self.lowers.build(repo, head, group=group)
        raise KvolError(f"snapshot of {repo.volume_id} at {head} kept disappearing; will retry")

    def warm_record(self, key: str | None) -> tuple[str, float] | None:
        """What the state records when the last copy on snapshot ``key`` goes: the
        snapshot and until when it stays warm (none if nothing is kept warm)."""
        keep = self.keep_warm_seconds
        return (key, time.time() + keep) if key is not None and keep > 0 else None

    def release(self, key: str) -> None:
        """A copy on snapshot ``key`` is gone: drop the snapshot unless a copy still uses
        it or it stays warm (a newer snapshot of the volume makes keeping it pointless)."""
        with self._lock:
            if any(p.lower == key for p in self.state.all()):
                return
            lower = self._lower_of(key)
            until = self.state.warm().get(key)
            if lower is not None and until is not None and not self._superseded(lower):
                self._janitor_wake.set()  # a new deadline to wait for
                return
            if until is not None:
                self.state.revise_warm({key: (until, None)})
            doomed = self._detach(lower) if lower is not None else []
        for path in doomed:
            self.lowers.discard(path)
        self.lowers.cache.trim()

    def drop_leftovers(self) -> None:
        """Snapshots no publication uses and none keeps warm (their last one went while
        no plugin ran, or their warm time ended), and half-built ones of an interrupted
        build."""
        with self._lock:
            used = {p.lower for p in self.state.all()}
            warm = self._revise_warm(time.time())
            for lower in self.lowers.all():
                if lower.key not in used and lower.key not in warm:
                    self._drop(lower)
            for partial in self.lowers.root.glob(f"*/{fsops.TEMP_PREFIX}*"):
                self.lowers.release_partial(partial)
                mounts.remove_tree(partial)

    # -- warm snapshots and the content cache ------------------------------------------

    def start_janitor(self) -> None:
        """Drop warm snapshots when their time ends and keep the content cache within its
        limit, in the background (until :meth:`stop_janitor`)."""
        if self._janitor is None:
            self._janitor = threading.Thread(
                target=self._janitor_loop, name="kvol-janitor", daemon=True
            )
            self._janitor.start()

    def stop_janitor(self) -> None:
        self._janitor_stop.set()
        self._janitor_wake.set()
        if self._janitor is not None:
            self._janitor.join()
            self._janitor = None

    def _janitor_loop(self) -> None:
        _ = self.lowers.cache.size  # read the cache from disk once, for its metrics
        while not self._janitor_stop.is_set():
            try:
                self.tidy()
            except Exception as exc:  # the next pass retries; serving goes on
                log.error("tidying snapshots and the content cache failed: %s", exc, exc_info=exc)
            expiries = self.state.warm().values()
            wait = min([*(t - time.time() for t in expiries), JANITOR_INTERVAL])
            self._janitor_wake.wait(max(wait, 0.05))
            self._janitor_wake.clear()

    def tidy(self, now: float | None = None) -> None:
        """Drop the warm snapshots whose time ended or that a newer snapshot of the same
        volume supersedes (a publish never picks them again), then trim the content cache.
        If entries only warm snapshots link keep the cache over its limit, those
        snapshots go too, the soonest to expire first: the limit is the node's disk,
        keeping warm only saves time."""
        now = time.time() if now is None else now
        doomed: list[Path] = []
        with self._lock:
            was = self.state.warm()
            warm = self._revise_warm(now)
            used = {p.lower for p in self.state.all()}
            for key in was:
                lower = self._lower_of(key)
                if lower is None or key in used:
                    continue
                if key not in warm or self._superseded(lower):
                    self.state.revise_warm({key: (warm[key], None)} if key in warm else {})
                    doomed += self._detach(lower)
        for path in doomed:
            self.lowers.discard(path)
        tried: set[str] = set()
        while self.lowers.cache.trim() > 0:
            with self._lock:
                used = {p.lower for p in self.state.all()}
                idle = sorted(
                    (until, key)
                    for key, until in self.state.warm().items()
                    if key not in used and key not in tried
                )
                if not idle:
                    return  # what is left is in use
                key = idle[0][1]
                tried.add(key)
                lower = self._lower_of(key)
                self.state.revise_warm({key: (idle[0][0], None)})
                if lower is None:
                    continue
                log.info("dropped warm snapshot %s: the content cache is over its limit", key)
                doomed = self._detach(lower)
            for path in doomed:
                self.lowers.discard(path)

    def _revise_warm(self, now: float) -> dict[str, float]:
        """The warm snapshots still warm at ``now``; the others are forgotten (under the
        lock; the caller drops their snapshots if no copy uses them). A deadline further
        away than the keep-warm time (the setting was lowered, or the clock went back)
        is brought in."""
        keep = self.keep_warm_seconds
        changes: dict[str, tuple[float, float | None]] = {}
        warm: dict[str, float] = {}
        for key, until in self.state.warm().items():
            if until <= now or keep == 0 or self._lower_of(key) is None:
                changes[key] = (until, None)
                continue
            if until > now + keep:
                changes[key] = (until, now + keep)
            warm[key] = min(until, now + keep)
        self.state.revise_warm(changes)
        return warm

    # -- single snapshots --------------------------------------------------------------

    def _lower_of(self, key: str) -> Lower | None:
        family, _, seq = key.partition("/")
        try:
            return self.lowers.get(family, int(seq))
        except ValueError:
            return None

    def _superseded(self, lower: Lower) -> bool:
        newest = self.lowers.newest(lower.volume_id)
        return newest is not None and newest.seq > lower.seq

    def _detach(self, lower: Lower) -> list[Path]:
        """Take a snapshot out of use (under the lock); returns what
        :meth:`Lowers.discard` removes, outside the lock (it is O(files))."""
        try:
            doomed = self.lowers.detach(lower)
        except MountError as exc:
            # Something this plugin has no record of still sits on it: keep it.
            log.warning("kept snapshot %s: %s", lower.key, exc)
            return []
        return [doomed] if doomed is not None else []

    def _drop(self, lower: Lower) -> None:
        for path in self._detach(lower):
            self.lowers.discard(path)
