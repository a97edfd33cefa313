"""History retention: which commits a volume keeps, and pruning the others away.

Policy. ``volumes/<volume-id>/retention.json`` = ``{"format": 1, "keepLast": N,
"keepForSeconds": S}`` (either may be absent). A commit is kept if it is one of the last N
or if it was published less than S seconds ago (by the store's clock); the head is always
kept. No object, or neither field, keeps everything: volumes that never set a policy
behave as before. The object is replaced whole (an atomic put).

Pruning (:func:`prune_history`, docs/data-safety.md "Retention") moves the *horizon*, where
retained history begins, and later deletes what is before it:

1. The cutoff is the oldest commit the policy keeps. A checkpoint at the cutoff (the whole
   state there) is written unless there is one, and read back.
2. ``volumes/<volume-id>/horizon/<cutoff>`` is created (put-if-absent, never rewritten).
   The horizon is the highest of these: it only moves forward. From here on readers
   start from the checkpoint at the horizon, ``restore`` and ``history`` stop there, and
   a publish whose base is older is refused (StaleBase) until the copy reloads.
3. Entries, checkpoints and older horizons before a horizon that was recorded at least a
   grace period ago (store clock) are deleted, oldest first. Until then they stay, and
   garbage collection keeps the content they name: a writer that checked the horizon
   just before a prune moved it may still publish an entry reusing that content, and such
   an entry lands within the renewal span, well inside the grace. Content only the
   pruned commits named goes at the first collection after that.

A crash at any step leaves a readable volume: each step only adds an object readers may
use, or removes objects no reader uses any more.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from kvol.content_gc import check_grace
from kvol.errors import CorruptData, InvalidArgument, NotFound
from kvol.grace import DEFAULT_GC_GRACE_SECONDS
from kvol.layout import parse_seq, seq_name
from kvol.repo import Repo
from kvol.store import Store

FORMAT = 1


def policy_key(volume_id: str) -> str:
    return f"volumes/{volume_id}/retention.json"


@dataclass(frozen=True)
class RetentionPolicy:
    #: Keep the newest this many commits (at least 1); None: no limit by count.
    keep_last: int | None = None
    #: Keep commits published less than this many seconds ago; None: no limit by age.
    keep_for_seconds: float | None = None

    def __post_init__(self) -> None:
        n = self.keep_last
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise InvalidArgument(f"keep-last must be a whole number of at least 1, not {n!r}")
        s = self.keep_for_seconds
        if s is not None and (
            isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or s < 0
        ):
            raise InvalidArgument(f"keep-for must be a number of seconds >= 0, not {s!r}")

    @property
    def keeps_everything(self) -> bool:
        return self.keep_last is None and self.keep_for_seconds is None

    def describe(self) -> str:
        if self.keeps_everything:
            return "keep every commit"
        parts = []
        if self.keep_last is not None:
            parts.append(f"the last {self.keep_last} commits")
        if self.keep_for_seconds is not None:
            parts.append(f"commits of the last {format_duration(self.keep_for_seconds)}")
        return "keep " + " and ".join(parts) + " (and always the head)"

    def to_json(self) -> bytes:
        data: dict[str, object] = {"format": FORMAT}
        if self.keep_last is not None:
            data["keepLast"] = self.keep_last
        if self.keep_for_seconds is not None:
            data["keepForSeconds"] = self.keep_for_seconds
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RetentionPolicy:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError("unknown format")
            keep_for = data.get("keepForSeconds")
            return cls(
                keep_last=data.get("keepLast"),
                keep_for_seconds=None if keep_for is None else float(keep_for),
            )
        except (ValueError, TypeError, AttributeError, InvalidArgument) as exc:
            raise CorruptData(f"the volume's retention policy is malformed: {exc}") from exc


def read_policy(store: Store, volume_id: str) -> RetentionPolicy:
    """The volume's policy; keep everything when none was ever set."""
    try:
        raw = store.get(policy_key(volume_id))
    except NotFound:
        return RetentionPolicy()
    return RetentionPolicy.from_json(raw)


def write_policy(store: Store, volume_id: str, policy: RetentionPolicy) -> None:
    store.put(policy_key(volume_id), policy.to_json())


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``30d``, ``2w``: a number of seconds."""
    value = text.strip().lower()
    scale = 1
    if value and value[-1] in _UNITS:
        scale = _UNITS[value[-1]]
        value = value[:-1]
    try:
        seconds = float(value) * scale
    except ValueError:
        raise InvalidArgument(
            f"{text!r} is not a duration (a number with s, m, h, d or w, such as 30d)"
        ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgument(f"{text!r} is not a duration of zero or more")
    return seconds


def format_duration(seconds: float) -> str:
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class PruneReport:
    #: Where retained history begins after this run (0: nothing pruned ever).
    horizon: int
    #: Whether this run moved the horizon.
    advanced: bool
    #: Entries, checkpoints and older horizons deleted by this run (before a horizon
    #: recorded at least the grace ago).
    entries_deleted: int = 0
    checkpoints_deleted: int = 0
    #: Commits before the horizon still in the store, deleted by a later run.
    entries_waiting: int = 0


def cutoff(repo: Repo, policy: RetentionPolicy, head: int, now: float) -> int:
    """The oldest commit ``policy`` keeps of a log whose head is ``head`` (0 keeps all)."""
    if policy.keeps_everything or head == 0:
        return 0
    keep = head  # the head is always kept
    if policy.keep_last is not None:
        keep = min(keep, max(1, head - policy.keep_last + 1))
    if policy.keep_for_seconds is not None:
        since = now - policy.keep_for_seconds
        # Entries list in seq order; each is dated by the store when it landed.
        for info in repo.store.list(repo.keys.log_prefix):
            seq = parse_seq(info.key.rsplit("/", 1)[-1])
            if seq is not None and seq <= head and info.mtime >= since:
                keep = min(keep, seq)
                break
    return keep


def prune_history(
    repo: Repo,
    policy: RetentionPolicy | None = None,
    grace_seconds: float = DEFAULT_GC_GRACE_SECONDS,
    dry_run: bool = False,
) -> PruneReport:
    """Apply the volume's retention policy (or ``policy``): see the module docstring.

    ``grace_seconds`` is the garbage collection grace (the same bounds): how long after a
    horizon is recorded the commits before it stay in the store. A dry run writes and
    deletes nothing, and reports where the horizon would be.
    """
    grace = check_grace(grace_seconds)
    store = repo.store
    if policy is None:
        policy = read_policy(store, repo.volume_id)
    now = store.now(max_age=0)
    horizon = repo.horizon()
    want = cutoff(repo, policy, repo.head(), now)
    advanced = False
    if want > horizon:
        if dry_run:
            return PruneReport(want, True, entries_waiting=_count_before(repo, want))
        # The checkpoint first: a horizon always has its state in the store.
        repo.write_checkpoint(want)
        repo._load_checkpoint(want)  # read back: raises if it is not what it must be
        store.put_if_absent(
            repo.horizon_prefix + seq_name(want), json.dumps({"format": FORMAT}).encode()
        )
        horizon, advanced = want, True
    if dry_run:
        return PruneReport(horizon, False, entries_waiting=_count_before(repo, horizon))
    # Only before a horizon every writer has had a grace period to see.
    settled = max((seq for seq, when in repo.horizons() if when <= now - grace), default=0)
    entries = checkpoints = 0
    if settled:
        entries = _delete_before(repo, repo.keys.log_prefix, settled)
        checkpoints = _delete_before(repo, repo.keys.checkpoint_prefix, settled)
        _delete_before(repo, repo.horizon_prefix, settled)
    return PruneReport(
        horizon,
        advanced,
        entries_deleted=entries,
        checkpoints_deleted=checkpoints,
        entries_waiting=_count_before(repo, horizon),
    )


def _seqs_before(repo: Repo, prefix: str, limit: int) -> list[int]:
    found = []
    for info in repo.store.list(prefix):
        seq = parse_seq(info.key.rsplit("/", 1)[-1])
        if seq is None:
            continue
        if seq >= limit:
            break  # names list in seq order
        found.append(seq)
    return found


def _count_before(repo: Repo, limit: int) -> int:
    return len(_seqs_before(repo, repo.keys.log_prefix, limit)) if limit else 0


def _delete_before(repo: Repo, prefix: str, limit: int) -> int:
    # Oldest first: what remains before the limit is always a run of the newest, so a
    # crash never leaves holes in it.
    seqs = _seqs_before(repo, prefix, limit)
    for seq in seqs:
        repo.store.delete(prefix + seq_name(seq))
    return len(seqs)


@dataclass(frozen=True)
class StorageUsage:
    #: Bytes of content the head refers to, each stored piece counted once.
    head_bytes: int
    #: Bytes of content objects (blobs and packs) the store holds for the volume.
    stored_bytes: int

    @property
    def history_bytes(self) -> int:
        """What the store holds beyond the head: kept history (and not yet collected
        content of pruned or failed commits)."""
        return max(0, self.stored_bytes - self.head_bytes)


def storage_usage(repo: Repo) -> StorageUsage:
    """The volume's head against its stored content. Lists every content object of the
    volume: meant for a periodic pass (the operator's, after pruning), not a hot path."""
    state = repo.state()
    pieces = {
        (part.kind, part.obj, part.offset, part.length)
        for record in state.files.values()
        for part in record.parts
    }
    stored = sum(
        info.size
        for prefix in (repo.keys.blob_prefix, repo.keys.pack_prefix)
        for info in repo.store.list(prefix)
    )
    return StorageUsage(sum(piece[3] for piece in pieces), stored)
