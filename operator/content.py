"""A Volume's content status: files, bytes, head and last commit, and its recent writers
and the pods among them; read from its store, and read again only when it may have
changed."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from kvol import errors
from kvol.operator import specs
from kvol.operator.failures import ReconcileError, classify
from kvol.operator.settings import Settings
from kvol.repo import Repo, RepoStats
from kvol.store import Store

#: At most this many pods are listed in a Volume's status (the count has them all).
MAX_PODS_LISTED = 50


@dataclass
class ContentStats:
    """A volume's content status as read at ``head``."""

    head: int
    stats: RepoStats
    #: status.pods: each pod that committed lately, newest first.
    pods: list[dict[str, Any]]


def content_stats(repo: Repo, window: float, now: float | None = None) -> ContentStats:
    """The content status of a volume, and its recent writers from one walk back through
    the entries of the last ``window`` seconds: ``writers`` counts pods (entries name the
    pod whose copy made them), and other working copies (CLI, SDK) one each."""
    stats = repo.stats(writers_window=0)  # files, bytes, head, last commit: no walk
    cutoff = (time.time() if now is None else now) - window
    writers: set[str] = set()
    pods: dict[str, dict[str, Any]] = {}
    seq = stats.head
    while seq > 0:
        entry = repo.read_entry(seq)
        if entry is None or entry.time < cutoff:
            break
        pod = entry.writer.pod
        writers.add(f"pod:{pod}" if pod else entry.writer.id)
        if pod and pod not in pods and len(pods) < MAX_PODS_LISTED:
            pods[pod] = {
                "name": pod.split("/", 1)[-1],
                "lastCommit": seq,
                # A copy's base moves to its own commit when no other commit came between.
                "baseSeq": seq if entry.base == seq - 1 else entry.base,
                "lastCommitTime": specs.rfc3339(entry.time),
            }
        seq -= 1
    return ContentStats(
        stats.head, replace(stats, writers_recent=len(writers)), list(pods.values())
    )


class ContentCache:
    """The content status last read of each volume, by volume id."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stats: dict[str, ContentStats] = {}

    def read(self, store: Store, volume_id: str) -> ContentStats:
        """Content status; recomputed only when the head moved or writers may have aged out."""
        repo = Repo(store, volume_id)
        try:
            head = repo.head()
            memo = self._stats.get(volume_id)
            window = self.settings.writers_window
            if memo is not None and memo.head == head:
                last = memo.stats.last_commit_time
                if memo.stats.writers_recent == 0 or last is None or time.time() - last > window:
                    return memo
            memo = content_stats(repo, window)
        except errors.KvolError as exc:
            raise ReconcileError(
                "BackendUnreachable", f"reading volume {volume_id}: {exc}", retry=classify(exc)
            ) from exc
        self._stats[volume_id] = memo
        return memo

    def forget(self, volume_id: str) -> None:
        self._stats.pop(volume_id, None)
