"""Checking a volume's stored data whole, and re-publishing lost content from local copies.

:func:`check` reads everything a reader could ever need: the metadata, every log entry
(a missing seq below a later one is a gap, never a silent end of history), every
checkpoint (which must equal the state the log replays to at its seq), and every content
object any commit refers to (present, of the right size, hashing to its name). Each
problem found is a :class:`Damage` naming the commits and files it makes unreadable.

:func:`repair` re-publishes damaged content objects from what working copies or a node's
content cache still hold. Content is addressed by its hash, so a local file is used only
when its bytes hash to exactly the object (or file) that is missing: nothing is written
whose hash was not verified first.
"""

from __future__ import annotations

import bisect
import functools
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from kvol import codec, paths
from kvol.content import DEFAULT_CHUNK_SIZE, digest, matches_content_id
from kvol.errors import CorruptData, InvalidArgument, NotFound
from kvol.index import Index
from kvol.layout import parse_seq
from kvol.model import Entry, FileRecord, Limits, State, VolumeMeta
from kvol.repo import Repo

#: Objects read and hashed at once (reads wait on the store; BLAKE3 releases the GIL).
CONCURRENCY = 8
#: Log entries or objects queued at once for the readers.
BATCH = 256

#: Damage to content objects, which :func:`repair` can mend from local copies.
CONTENT_DAMAGE = frozenset({"missing-object", "size-mismatch", "hash-mismatch"})

#: A node content cache names each file ``<hh>/<content id>.<mode>.<mtime_ns>``.
_CACHE_NAME = re.compile(r"^([0-9a-f]{64})\.")

_T = TypeVar("_T")
_R = TypeVar("_R")

#: Called as the check goes with (bytes checked so far, bytes to check in all).
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Damage:
    """One problem found in a volume's stored data."""

    #: "missing-object", "size-mismatch", "hash-mismatch" (content objects),
    #: "corrupt-entry", "foreign-entry", "log-gap" (the log), "corrupt-checkpoint",
    #: "corrupt-meta", "bad-record" (a file record whose content id its parts do not give).
    kind: str
    #: Store key of the damaged or missing thing.
    key: str
    detail: str
    #: Commits whose state it affects (unreadable, or read differently than published).
    commits: tuple[int, ...]
    #: Files affected at those commits (empty when the damage hides which they are).
    files: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "detail": self.detail,
            "commits": list(self.commits),
            "files": list(self.files),
        }


@dataclass(frozen=True)
class RepairOutcome:
    #: Store key of the object repaired, or that could not be.
    key: str
    #: What was done: the local file(s) used, or why nothing could be.
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "detail": self.detail}


@dataclass(frozen=True)
class RepairReport:
    repaired: tuple[RepairOutcome, ...]
    not_repaired: tuple[RepairOutcome, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "repaired": [r.to_dict() for r in self.repaired],
            "not_repaired": [r.to_dict() for r in self.not_repaired],
        }


@dataclass(frozen=True)
class FsckReport:
    volume_id: str
    #: The highest seq the store shows signs of (a log entry or a checkpoint).
    head: int
    entries_checked: int
    checkpoints_checked: int
    objects_checked: int
    #: Bytes of content read and hashed (0 without content verification).
    bytes_checked: int
    damage: tuple[Damage, ...]
    #: Set by :func:`check_and_repair`: then ``damage`` is what is left after repairing.
    repair: RepairReport | None = None

    @property
    def ok(self) -> bool:
        return not self.damage

    def to_dict(self) -> dict[str, Any]:
        return {
            "volume_id": self.volume_id,
            "ok": self.ok,
            "head": self.head,
            "entries_checked": self.entries_checked,
            "checkpoints_checked": self.checkpoints_checked,
            "objects_checked": self.objects_checked,
            "bytes_checked": self.bytes_checked,
            "damage": [d.to_dict() for d in self.damage],
            "repair": None if self.repair is None else self.repair.to_dict(),
        }


# -- what the log says: which record every path had, from which commit to which ------------


@dataclass(frozen=True, slots=True)
class _Use:
    """``path`` held ``record`` at every commit from ``first`` to ``last``."""

    path: str
    record: FileRecord
    first: int
    last: int
    #: The log entry (or checkpoint) the record was read from.
    origin: str


@dataclass
class _Pending:
    """Damage still being learned about while the log is replayed."""

    kind: str
    key: str
    detail: str
    first: int
    last: int | None = None
    files: set[str] = field(default_factory=set)

    def done(self) -> Damage:
        last = self.last if self.last is not None else self.first
        return Damage(
            self.kind,
            self.key,
            self.detail,
            tuple(range(self.first, last + 1)),
            tuple(sorted(self.files)),
        )


@dataclass
class _Replay:
    head: int = 0
    entries: int = 0
    checkpoints: int = 0
    uses: list[_Use] = field(default_factory=list)
    damage: list[_Pending] = field(default_factory=list)


class _Tracker:
    """Follows the state commit by commit and closes a :class:`_Use` whenever a path's
    record changes, so every commit a record was visible at is known without keeping
    every state."""

    def __init__(self, uses: list[_Use]) -> None:
        self.live: dict[str, tuple[FileRecord, int, str]] = {}
        self.uses = uses

    def update(self, state: State, touched: Iterable[str], seq: int, origin: str) -> None:
        for path in touched:
            new = state.files.get(path)
            old = self.live.get(path)
            if old is not None and old[0] == new:
                continue
            if old is not None:
                record, first, was_from = old
                if seq - 1 >= first:
                    self.uses.append(_Use(path, record, first, seq - 1, was_from))
                del self.live[path]
            if new is not None:
                self.live[path] = (new, seq, origin)

    def finish(self, head: int) -> None:
        for path, (record, first, origin) in self.live.items():
            if head >= first:
                self.uses.append(_Use(path, record, first, head, origin))
        self.live.clear()


def _log_seqs(repo: Repo) -> tuple[set[int], set[int]]:
    """Seqs of the log entries and of the checkpoints the store lists."""

    def seqs(prefix: str) -> set[int]:
        found = (parse_seq(i.key.rsplit("/", 1)[-1]) for i in repo.store.list(prefix))
        return {s for s in found if s is not None and s > 0}

    # Checkpoints first: a checkpoint is written after its entry, so one listed here has
    # its entry listed below even while commits go on (no false gap).
    checkpoints = seqs(repo.keys.checkpoint_prefix)
    logs = seqs(repo.keys.log_prefix)
    return logs, checkpoints


#: What reading one entry gave: the entry, or None and the damage kind and why.
_Read = tuple[Entry | None, str, str]


def _read_entry(repo: Repo, seq: int) -> _Read:
    try:
        entry = repo.read_entry(seq)
    except CorruptData as exc:
        try:
            Entry.from_payload(codec.decode("entry", repo.store.get(repo.keys.log(seq))))
        except (CorruptData, NotFound):
            return None, "corrupt-entry", str(exc)
        # Well formed, yet refused: written for another volume or another position.
        return None, "foreign-entry", str(exc)
    if entry is None:
        return None, "log-gap", "missing"
    return entry, "", ""


def _bounded_map(
    pool: ThreadPoolExecutor, fn: Callable[[_T], _R], items: Sequence[_T]
) -> Iterator[_R]:
    """``pool.map`` in order, with a bounded number of tasks queued at a time (a volume
    may have millions of objects)."""
    for start in range(0, len(items), BATCH):
        yield from pool.map(fn, items[start : start + BATCH])


def _read_entries(repo: Repo, seqs: Sequence[int], pool: ThreadPoolExecutor) -> Iterator[_Read]:
    return _bounded_map(pool, lambda s: _read_entry(repo, s), seqs)


def _load_checkpoint(repo: Repo, seq: int) -> State:
    # The repository's own loader, so fsck accepts exactly what readers accept.
    return repo._load_checkpoint(seq)


def _replay(repo: Repo, pool: ThreadPoolExecutor) -> _Replay:
    """Replay the whole log as readers would, checking every entry and checkpoint."""
    # The horizon first: entries and checkpoints before it are out of history (pruned, or
    # waiting to be deleted), and none is read; the replay starts from its checkpoint.
    horizon = repo.horizon()
    logs, checkpoints = _log_seqs(repo)
    logs = {s for s in logs if s >= horizon}
    checkpoints = {s for s in checkpoints if s >= horizon}
    result = _Replay(head=max(logs | checkpoints | {horizon}, default=0))
    ordered = sorted(checkpoints)
    head = result.head
    tracker = _Tracker(result.uses)
    state = State()
    #: Damage to the log since the last checkpoint that could be trusted: commits from
    #: there on are unreadable until a good checkpoint restores the state.
    open_damage: list[_Pending] = []
    gap: _Pending | None = None
    if horizon:
        key = repo.keys.checkpoint(horizon)
        try:
            state = _load_checkpoint(repo, horizon)
            result.checkpoints += 1
            tracker.update(state, set(state.files), horizon, key)
        except (CorruptData, NotFound) as exc:
            pending = _Pending(
                "corrupt-checkpoint",
                key,
                f"checkpoint {horizon}, where retained history begins, is unreadable: {exc}",
                horizon,
            )
            result.damage.append(pending)
            open_damage.append(pending)
            state = State(horizon)
    seqs = list(range(horizon + 1, head + 1))
    for seq, (entry, kind, why) in zip(seqs, _read_entries(repo, seqs, pool), strict=True):
        key = repo.keys.log(seq)
        if entry is not None:
            result.entries += 1
            gap = None
            touched: set[str] = set()
            state.apply(entry, seq, touched)
            tracker.update(state, touched, seq, key)
        elif kind == "log-gap":
            if gap is None:
                gap = _Pending(kind, key, f"log entry {seq} is missing", seq)
                result.damage.append(gap)
                open_damage.append(gap)
            else:
                gap.detail = f"log entries {gap.first} to {seq} are missing"
            state.seq = seq
        else:
            gap = None
            pending = _Pending(kind, key, f"log entry {seq} is unreadable: {why}", seq)
            result.damage.append(pending)
            open_damage.append(pending)
            state.seq = seq
        if seq in checkpoints:
            adopted = _check_checkpoint(repo, seq, state, ordered, head, open_damage, result)
            if adopted is not None:
                state, changed = adopted
                tracker.update(state, changed, seq, repo.keys.checkpoint(seq))
    for pending in open_damage:
        pending.last = head
    tracker.finish(head)
    return result


def _check_checkpoint(
    repo: Repo,
    seq: int,
    replayed: State,
    checkpoints: list[int],
    head: int,
    open_damage: list[_Pending],
    result: _Replay,
) -> tuple[State, set[str]] | None:
    """Compare the checkpoint at ``seq`` with the replayed state. Where the log before it
    could not be read whole, the checkpoint is adopted: returns its state and the paths
    it holds differently (what the lost entries changed)."""
    key = repo.keys.checkpoint(seq)
    # Readers start from the newest checkpoint at or below what they read.
    at = bisect.bisect_right(checkpoints, seq)
    reach = checkpoints[at] - 1 if at < len(checkpoints) else head
    try:
        saved = _load_checkpoint(repo, seq)
    except (CorruptData, NotFound) as exc:
        result.damage.append(
            _Pending(
                "corrupt-checkpoint",
                key,
                f"checkpoint {seq} is unreadable: {exc}",
                seq,
                reach,
                set() if open_damage else set(replayed.files),
            )
        )
        return None
    result.checkpoints += 1
    if open_damage:
        # The log before it has holes: the checkpoint is the best account of the state,
        # and what it holds differently is what the lost entries changed.
        changed = _differences(replayed, saved)
        for pending in open_damage:
            pending.last = seq - 1
            pending.files |= changed
        open_damage.clear()
        return saved, changed
    changed = _differences(replayed, saved)
    if changed:
        shown = ", ".join(sorted(changed)[:3])
        result.damage.append(
            _Pending(
                "corrupt-checkpoint",
                key,
                f"checkpoint {seq} does not match the log ({len(changed)} paths differ: {shown})",
                seq,
                reach,
                changed,
            )
        )
    return None


def _differences(a: State, b: State) -> set[str]:
    changed = {p for p in a.files.keys() | b.files.keys() if a.files.get(p) != b.files.get(p)}
    return changed | (a.dirs ^ b.dirs)


# -- content objects ------------------------------------------------------------------------


@dataclass
class _Object:
    key: str
    kind: str
    obj: str
    uses: list[tuple[_Use, int]] = field(default_factory=list)  # (use, part index)

    @functools.cached_property
    def expected(self) -> int:
        """Bytes the records need: a blob's length, or how far into a pack they read."""
        if self.kind == "b":
            lengths = [use.record.parts[i].length for use, i in self.uses]
            return max(set(lengths), key=lengths.count)
        return max(use.record.parts[i].offset + use.record.parts[i].length for use, i in self.uses)


def _objects(repo: Repo, uses: Iterable[_Use]) -> dict[str, _Object]:
    objects: dict[str, _Object] = {}
    for use in uses:
        for i, part in enumerate(use.record.parts):
            key = repo.keys.content(part.kind, part.obj)
            found = objects.get(key)
            if found is None:
                found = objects[key] = _Object(key, part.kind, part.obj)
            found.uses.append((use, i))
    return objects


def _affected(uses: Iterable[_Use]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    spans: list[tuple[int, int]] = []
    files: set[str] = set()
    for use in uses:
        spans.append((use.first, use.last))
        files.add(use.path)
    # Merged first: many files share most of their commits.
    commits: list[int] = []
    end = 0
    for first, last in sorted(spans):
        commits.extend(range(max(first, end + 1), last + 1))
        end = max(end, last)
    return tuple(commits), tuple(sorted(files))


def _object_damage(obj: _Object, kind: str, detail: str) -> Damage:
    commits, files = _affected(use for use, _ in obj.uses)
    return Damage(kind, obj.key, detail, commits, files)


def _record_damage(uses: Iterable[_Use], detail: str) -> list[Damage]:
    """One damage per log entry (or checkpoint) that published a bad record."""
    by_origin: dict[str, list[_Use]] = {}
    for use in uses:
        by_origin.setdefault(use.origin, []).append(use)
    result = []
    for origin, group in sorted(by_origin.items()):
        commits, files = _affected(group)
        result.append(Damage("bad-record", origin, detail, commits, files))
    return result


def _record_consistent(record: FileRecord) -> bool:
    """Do the record's parts give its content id (as a reader checks before reading)?"""
    if len(record.parts) > 1:
        return matches_content_id(record)
    if len(record.parts) == 1 and record.parts[0].kind == "b":
        return record.parts[0].obj == record.hash
    return True  # a packed file is checked against its bytes, with the pack


def _check_object(repo: Repo, obj: _Object, verify_content: bool) -> tuple[list[Damage], int]:
    """Damage found in one object, and the bytes read to find it."""
    store = repo.store
    if not verify_content:
        try:
            size = store.head(obj.key).size
        except NotFound:
            return [_object_damage(obj, "missing-object", "content object is missing")], 0
        if (obj.kind == "b" and size != obj.expected) or size < obj.expected:
            return [_size_damage(obj, size)], 0
        return [], 0
    try:
        data = store.get(obj.key)
    except NotFound:
        return [_object_damage(obj, "missing-object", "content object is missing")], 0
    if digest(data) != obj.obj:
        if (obj.kind == "b" and len(data) != obj.expected) or len(data) < obj.expected:
            return [_size_damage(obj, len(data))], len(data)
        return [
            _object_damage(obj, "hash-mismatch", "content object does not hash to its name")
        ], len(data)
    # The object is what its name says; a record that reads it differently is wrong.
    bad: list[_Use] = []
    for use, i in obj.uses:
        part = use.record.parts[i]
        if obj.kind == "b":
            wrong = part.length != len(data)
        else:
            piece = data[part.offset : part.offset + part.length]
            wrong = len(piece) != part.length or digest(piece) != use.record.hash
        if wrong:
            bad.append(use)
    damage = _record_damage(bad, f"file record reads {obj.key} wrongly") if bad else []
    return damage, len(data)


def _size_damage(obj: _Object, size: int) -> Damage:
    need = "holds" if obj.kind == "b" else "needs at least"
    return _object_damage(
        obj, "size-mismatch", f"content object has {size} bytes; the log {need} {obj.expected}"
    )


def _meta_damage(repo: Repo) -> list[Damage]:
    try:
        # Read again: a handle may hold metadata it read before the damage.
        meta = VolumeMeta.from_json(repo.store.get(repo.keys.meta))
    except NotFound:
        return [Damage("corrupt-meta", repo.keys.meta, "volume metadata is missing", (), ())]
    except (CorruptData, InvalidArgument) as exc:  # malformed limits are InvalidArgument
        return [Damage("corrupt-meta", repo.keys.meta, str(exc), (), ())]
    if meta.id != repo.volume_id:
        return [
            Damage(
                "corrupt-meta",
                repo.keys.meta,
                f"volume metadata names volume {meta.id}, not {repo.volume_id}",
                (),
                (),
            )
        ]
    return []


def _without_meta(repo: Repo) -> Repo:
    """The volume with stand-in metadata, so that its log is still read when its own
    metadata is damaged: entries and checkpoints are checked against the volume and
    position they name, as they are in every volume (whether they must name one is what
    the lost metadata said)."""
    stand_in = VolumeMeta(repo.volume_id, 2, Limits(), 0.0, DEFAULT_CHUNK_SIZE)
    return Repo(repo.store, repo.volume_id, stand_in)


def check(
    repo: Repo, *, verify_content: bool = True, progress: Progress | None = None
) -> FsckReport:
    """Check everything of the volume; see the module docstring. Never raises for damage
    it finds (it reports it); raises NotFound if the store holds nothing of the volume,
    and store errors as they come."""
    meta_damage = _meta_damage(repo)
    if meta_damage:
        if not any(True for _ in repo.store.list(repo.keys.prefix)):
            raise NotFound(f"volume {repo.volume_id} does not exist in {repo.store.url}")
        repo = _without_meta(repo)
    with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="kvol-fsck") as pool:
        replay = _replay(repo, pool)
        objects = _objects(repo, replay.uses)
        damage: list[Damage] = list(meta_damage)
        damage.extend(p.done() for p in replay.damage)
        inconsistent = [u for u in replay.uses if not _record_consistent(u.record)]
        damage.extend(
            _record_damage(inconsistent, "file record's parts do not give its content id")
        )
        total = sum(o.expected for o in objects.values())
        done = 0
        read = 0
        lock = threading.Lock()
        if progress is not None:
            progress(0, total)

        def one(obj: _Object) -> list[Damage]:
            nonlocal done, read
            found, nbytes = _check_object(repo, obj, verify_content)
            with lock:
                done += obj.expected
                read += nbytes
            return found

        for found in _bounded_map(pool, one, sorted(objects.values(), key=lambda o: o.key)):
            damage.extend(found)
            if progress is not None:
                progress(done, total)
    return FsckReport(
        volume_id=repo.volume_id,
        head=replay.head,
        entries_checked=replay.entries,
        checkpoints_checked=replay.checkpoints,
        objects_checked=len(objects),
        bytes_checked=read,
        damage=tuple(damage),
    )


# -- repair -----------------------------------------------------------------------------------


class _Sources:
    """Local files that may hold given content, by content id: files of working copies
    (their index says which content each had when it last matched the volume) and entries
    of node content caches (named by content id). A directory is searched whole, so a
    node plugin's state directory offers its cache and every copy in it. Every candidate
    is hashed before use."""

    def __init__(self, dirs: Sequence[Path]) -> None:
        self.by_id: dict[str, list[Path]] = {}
        #: Working copy roots: the file at an affected path is worth a try too.
        self.roots: list[Path] = []
        for d in dirs:
            if not Path(d).is_dir():
                raise NotFound(f"{d} is not a directory")
            self._search(Path(d))

    def _add(self, cid: str, path: Path) -> None:
        self.by_id.setdefault(cid, []).append(path)

    def _copy_at(self, top: Path) -> tuple[Path, Path] | None:
        """(root, index) of a working copy at ``top``: a plain one (``.kvol`` inside it)
        or one of the node plugin (``root`` and ``meta`` side by side)."""
        if (top / paths.RESERVED / "index").is_file():
            return top, top / paths.RESERVED / "index"
        if (top / "meta" / "index").is_file() and (top / "root").is_dir():
            return top / "root", top / "meta" / "index"
        return None

    def _working_copy(self, root: Path, index_path: Path) -> None:
        self.roots.append(root)
        index = Index.load(index_path)
        for rel, entry in index.files.items():
            record = entry.record
            if record is not None:
                self._add(record.hash, root / rel)

    def _search(self, top: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(top):
            here = Path(dirpath)
            copy = self._copy_at(here)
            if copy is not None:
                self._working_copy(*copy)
                # Its files are known by its index; what else is here is not a cache.
                dirnames.clear()
                continue
            parent = here.name
            for name in filenames:
                match = _CACHE_NAME.match(name)
                if match and match.group(1)[:2] == parent:
                    self._add(match.group(1), here / name)

    def candidates(self, use: _Use) -> Iterator[Path]:
        yield from self.by_id.get(use.record.hash, ())
        for root in self.roots:
            yield root / use.path

    def read(self, use: _Use, offset: int, length: int) -> Iterator[tuple[Path, bytes]]:
        """Bytes ``offset..offset+length`` of each local file that may be ``use``'s."""
        for path in self.candidates(use):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                # Never a FIFO or device: reading one could block or never end.
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                data = _pread_all(fd, offset, length)
            except OSError:
                continue
            finally:
                os.close(fd)
            yield path, data


def _pread_all(fd: int, offset: int, length: int) -> bytes:
    chunks = []
    while length > 0:
        chunk = os.pread(fd, min(length, 1 << 24), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(chunks)


def _rebuild_blob(obj: _Object, sources: _Sources) -> tuple[bytes, str] | None:
    for use, i in obj.uses:
        part = use.record.parts[i]
        offset = sum(p.length for p in use.record.parts[:i])
        for path, data in sources.read(use, offset, part.length):
            if len(data) == part.length and digest(data) == obj.obj:
                return data, str(path)
    return None


def _rebuild_pack(repo: Repo, obj: _Object, sources: _Sources) -> tuple[bytes, str] | None:
    """The pack byte for byte, from the files packed in it, if every byte is accounted
    for: packs hold the files of one commit back to back, each once."""
    pieces: dict[int, tuple[int, _Use]] = {}
    for use, i in obj.uses:
        part = use.record.parts[i]
        known = pieces.get(part.offset)
        if known is not None and known[0] != part.length:
            return None  # two records disagree on what is at one place: cannot tell which
        pieces[part.offset] = (part.length, use)
    try:
        damaged: bytes | None = repo.store.get(obj.key)
    except NotFound:
        damaged = None
    out = bytearray()
    used: list[str] = []
    for offset in sorted(pieces):
        length, use = pieces[offset]
        if offset != len(out):
            return None  # bytes no record accounts for
        piece: bytes | None = None
        if damaged is not None:
            # What survived of the damaged pack counts if it hashes to the file.
            candidate = damaged[offset : offset + length]
            if len(candidate) == length and digest(candidate) == use.record.hash:
                piece = candidate
        if piece is None:
            for path, data in sources.read(use, 0, length + 1):
                if len(data) == length and digest(data) == use.record.hash:
                    piece = data
                    used.append(str(path))
                    break
        if piece is None:
            return None
        out += piece
    data = bytes(out)
    if digest(data) != obj.obj:
        return None  # the pack held something else too (a file never published)
    return data, ", ".join(used) or "the intact parts of the damaged pack"


def repair(repo: Repo, report: FsckReport, sources: Sequence[Path]) -> RepairReport:
    """Re-publish every damaged content object of ``report`` that ``sources`` (working
    copies, node content caches) can still supply, each under its own key after its hash
    is verified, and read back once written. Other damage is reported as not repaired."""
    found = _Sources(sources)
    wanted = {d.key for d in report.damage if d.kind in CONTENT_DAMAGE}
    repaired: list[RepairOutcome] = []
    not_repaired: list[RepairOutcome] = []
    if wanted:
        if _meta_damage(repo):
            repo = _without_meta(repo)
        with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="kvol-fsck") as pool:
            replay = _replay(repo, pool)
        objects = _objects(repo, replay.uses)
        for key in sorted(wanted):
            obj = objects.get(key)
            if obj is None:
                not_repaired.append(RepairOutcome(key, "no commit refers to it any more"))
                continue
            rebuilt = (
                _rebuild_blob(obj, found) if obj.kind == "b" else _rebuild_pack(repo, obj, found)
            )
            if rebuilt is None:
                not_repaired.append(RepairOutcome(key, "no local file holds the content it had"))
                continue
            data, source = rebuilt
            repo.store.put(key, data)
            if digest(repo.store.get(key)) != obj.obj:
                not_repaired.append(RepairOutcome(key, "written, but read back wrong"))
                continue
            repaired.append(RepairOutcome(key, f"rebuilt from {source}"))
    for d in report.damage:
        if d.kind not in CONTENT_DAMAGE:
            not_repaired.append(RepairOutcome(d.key, f"{d.kind}: not repairable from files"))
    return RepairReport(tuple(repaired), tuple(not_repaired))


def check_and_repair(
    repo: Repo,
    sources: Sequence[Path],
    *,
    verify_content: bool = True,
    progress: Progress | None = None,
) -> FsckReport:
    """:func:`check`, then :func:`repair` what it found; the report's damage is then
    what is left, and its ``repair`` what was done."""
    report = check(repo, verify_content=verify_content, progress=progress)
    if report.ok:
        return replace(report, repair=RepairReport((), ()))
    done = repair(repo, report, sources)
    fixed = {r.key for r in done.repaired}
    return replace(
        report, damage=tuple(d for d in report.damage if d.key not in fixed), repair=done
    )


def describe_commits(commits: Sequence[int]) -> str:
    """(3, 4, 5, 9) -> '3-5, 9'."""
    runs: list[str] = []
    start = prev = None
    for c in commits:
        if prev is not None and c == prev + 1:
            prev = c
            continue
        if start is not None:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = c
    if start is not None:
        runs.append(str(start) if start == prev else f"{start}-{prev}")
    return ", ".join(runs)


__all__ = [
    "Damage",
    "FsckReport",
    "RepairOutcome",
    "RepairReport",
    "check",
    "check_and_repair",
    "describe_commits",
    "repair",
]
