"""The operator's reconciliation settings: namespaces, intervals and windows."""

from __future__ import annotations

from dataclasses import dataclass

from kvol.grace import DEFAULT_GC_GRACE_SECONDS


@dataclass
class Settings:
    #: Namespace of Secrets named by a VolumeBackend without a namespace.
    operator_namespace: str = "kvol-system"
    #: Seconds between level-based passes over each object (status, reachability).
    status_interval: float = 10.0
    #: Seconds before checking again whether pods still mount a Volume being deleted.
    in_use_retry: float = 5.0
    #: Window in which a writer counts as recent (status.writers).
    writers_window: float = 300.0
    #: Seconds between retention passes over each Volume (prune and garbage collection
    #: with a policy, storage measured either way); 0 turns them off.
    prune_interval: float = 3600.0
    #: The garbage collection grace of those passes (as ``kvol volume gc --grace``).
    gc_grace: float = DEFAULT_GC_GRACE_SECONDS
