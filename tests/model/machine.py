"""A hypothesis state machine: several working copies of one volume against the model.

Each step changes one copy's files (write, delete, ``rm -r``, rename, file <-> directory),
or commits, reloads, reopens or crashes it (the object dropped unclosed, or the process
SIGKILLed at a chosen store call or filesystem mutation of a commit or reload), replaces
it with a new one as a pod that ends and one that starts do, or runs
the SDK's ``rm -r``, a garbage collection, or ``kvol volume gc`` with a retention policy
(prune, then collect: in this process, killed at one of its store calls, or while a
commit in another process stands still at one of its points). After every step the real
trees, each copy's base, the head as a fresh reader sees it, and the store's integrity
are checked against :mod:`tests.model.reference`; any difference fails the run.

The copies are plain working copies, or (``Env.layout == "overlay"``) the node plugin's
copy-on-write ones: an overlay mount over a snapshot of the volume on this machine, whose
changes are read from the upper layer alone.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kvol import fsck, fsops
from kvol import repo as repo_module
from kvol.blobfill import BlobFiller
from kvol.content import min_gc_grace
from kvol.errors import HistoryPruned, StaleBase
from kvol.index import DELTA_SUFFIX
from kvol.layout import parse_seq
from kvol.mounting import mounts_under, unmount
from kvol.overlay import ContentCache, Lower, Lowers, OverlayWorkingCopy, lower_family
from kvol.repo import Repo
from kvol.retention import prune_history
from kvol.store import Store
from kvol.volume import Volume
from kvol.workcopy import COMMIT_JOURNAL_FILE, INDEX_FILE, JOURNAL_FILE, WorkingCopy
from tests.model.reference import (
    CopyModel,
    LogModel,
    Pending,
    Tree,
    VolumeState,
    ancestors,
    short,
    under,
)

#: Chunks of large files: small, so that a multi-part file stays cheap.
CHUNK_SIZE = 64 * 1024
#: Just over the size up to which files are packed together (kvol.content.PACK_THRESHOLD).
LARGE_SIZE = 256 * 1024 + 3 * CHUNK_SIZE + 123
COPIES = 3
#: Paths are drawn from a small universe so that copies collide on them often.
PATHS = ("a", "b", "a/a", "a/b", "b/a", "b/b", "a/a/a", "b/a/b")
CONCURRENCY = 4

COPY = st.integers(0, COPIES - 1)
TAG = st.integers(0, 5)
LARGE = st.sampled_from([False, False, False, True])
#: Kill points: most operations have a few dozen; the first ones are the interesting ones.
POINT = st.integers(1, 12) | st.integers(1, 60)
WHEN = st.sampled_from(["before", "after"])
#: Retention policies keep the last few commits: pruning passes copies' bases often.
KEEP = st.integers(1, 4)
KILLED = ["commit", "reload", "commit", "reload", "prune", "race", "race_prune"]
REPO_ROOT = Path(__file__).resolve().parents[2]
#: The mount group of overlay copies made for pods with an fsGroup.
MOUNT_GROUP = 4321


#: KVOL_MODEL_LONG=1: the long run (many more examples and steps).
LONG = os.environ.get("KVOL_MODEL_LONG") == "1"


def model_settings(examples: int, steps: int) -> settings:
    """A bounded run is derandomized (the same examples, and time, on every run); a long
    run explores, and keeps what it finds in the example database."""
    return settings(
        max_examples=examples * 20 if LONG else examples,
        stateful_step_count=steps * 2 if LONG else steps,
        deadline=None,
        derandomize=not LONG,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@functools.cache
def content(tag: int, large: bool) -> bytes:
    """Distinct, recognisable contents; large ones span several chunks, each different.
    One small content is empty: an empty file takes no room in an image snapshot's blob."""
    head = f"<{tag}>".encode()
    if not large:
        return b"" if tag == 5 else head * (tag % 3 + 1)
    blocks = (
        hashlib.blake2b(head + i.to_bytes(4, "big")).digest() for i in range(LARGE_SIZE // 64 + 1)
    )
    return head + b"".join(blocks)[: LARGE_SIZE - len(head)]


@dataclass
class Env:
    """Where an example's store lives and how a child process reaches it."""

    kind: str
    base: Path
    #: A new, empty store for one example (a directory, or a fresh prefix of a bucket).
    new_store: Callable[[Path], tuple[Store, dict[str, Any]]]
    child_env: dict[str, str] = field(default_factory=dict)
    #: Stores can be aged (the filesystem's object times) to make GC collect with the
    #: default grace; otherwise GC runs with the shortest grace it accepts.
    can_age: bool = False
    #: "plain" working copies, or "overlay" ones (root, overlayfs).
    layout: str = "plain"
    #: Overlay copies over image snapshots filled as they are read (kvol.image_lowers).
    images: bool = False


def read_tree(root: Path) -> Tree:
    """Every file (with its content) and directory under a copy's root."""
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        # Interrupted downloads' leftovers are never part of the copy (commits skip them).
        dirnames[:] = [
            d for d in dirnames if not d.startswith(fsops.TEMP_PREFIX) and (rel_dir or d != ".kvol")
        ]
        for d in dirnames:
            dirs.add(f"{rel_dir}/{d}" if rel_dir else d)
        for name in filenames:
            if name.startswith(fsops.TEMP_PREFIX):
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            with open(os.path.join(dirpath, name), "rb") as f:
                files[rel] = f.read()
    return Tree(files, frozenset(dirs))


def read_head(repo: Repo, seq: int | None = None) -> tuple[int, Tree]:
    """The volume at ``seq`` (the head) as a fresh reader sees it."""
    state = Repo(repo.store, repo.volume_id).state(seq)
    reader = repo.reader()
    try:
        files = {p: reader.read(r) for p, r in state.files.items()}
    finally:
        reader.release()
    return state.seq, Tree(files, frozenset(state.all_dirs()))


def check_store(repo: Repo) -> None:
    """The store is whole: kvol's fsck finds no damage."""
    report = fsck.check(Repo(repo.store, repo.volume_id))
    assert report.ok, f"fsck found damage: {report.damage}"


class Divergence(AssertionError):
    """A copy, the head or a past commit is not what the model says it must be."""


def expect_same(what: str, expected: Tree, actual: Tree, steps: list[str]) -> None:
    if expected == actual:
        return
    want, got = expected.describe(), actual.describe()
    diff = {
        p: (want.get(p, "-"), got.get(p, "-"))
        for p in sorted(set(want) | set(got))
        if want.get(p) != got.get(p)
    }
    raise Divergence(
        f"{what} diverges from the model (path: expected, actual): {diff}\n"
        f"steps so far:\n  " + "\n  ".join(steps)
    )


class VolumeMachine(RuleBasedStateMachine):
    env: Env  # set by machine_for()

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="model-", dir=self.env.base))
        self.store, self.child_spec = self.env.new_store(self.dir)
        self.repo = Repo.create(self.store, chunk_size=CHUNK_SIZE)
        self.log = LogModel()
        self.steps: list[str] = []
        self.models: list[CopyModel] = []
        self.copies: list[WorkingCopy] = []
        # The overlay layout: this machine's snapshots, and each copy's layers and snapshot
        # (every copy a pod ever had, so that teardown unmounts them all).
        self.lowers: Lowers | None = None
        if self.env.layout == "overlay":
            images = BlobFiller(self.dir / "blobs").start() if self.env.images else None
            self.lowers = Lowers(
                self.dir / "lowers", ContentCache(self.dir / "cache"), images=images
            )
        self.layers: dict[int, Path] = {}
        self.lower_of: dict[int, Lower] = {}
        self.group_of: dict[int, int | None] = {}
        self.every_layer: list[Path] = []
        for i in range(COPIES):
            self.copies.append(self._new_copy(i))
            self.models.append(self.log.new_copy())

    def root(self, i: int) -> Path:
        if self.lowers is None:
            return self.dir / f"copy{i}"
        return self.layers[i] / "merged"

    def _new_copy(self, i: int, reuse: bool = False, grouped: bool = False) -> WorkingCopy:
        """A new copy of the head, as a publish makes it: plain, or an overlay over a
        snapshot of the head (or, with ``reuse``, the newest one here, then reloaded);
        ``grouped``: for a pod with an fsGroup (the snapshot is that group's)."""
        if self.lowers is None:
            return WorkingCopy.create(self.repo, self.root(i), concurrency=CONCURRENCY)
        group = MOUNT_GROUP if grouped else None
        head = Repo(self.store, self.repo.volume_id).head()
        family = lower_family(self.repo.volume_id, group)
        lower = self.lowers.newest(family, at_most=head) if reuse else None
        if lower is None:
            lower = self.lowers.build(self.repo, head, group=group)
        layer = self.dir / f"copy{i}-{len(self.every_layer)}"
        self.every_layer.append(layer)
        self.layers[i], self.lower_of[i], self.group_of[i] = layer, lower, group
        copy = OverlayWorkingCopy.mount(
            self.repo, self.lowers, lower, layer, concurrency=CONCURRENCY, group=group
        )
        if lower.seq < head:
            copy.reload()
        return copy

    def _open(self, i: int) -> WorkingCopy:
        """Copy ``i`` opened again from disk (the plugin re-adopts an overlay copy)."""
        if self.lowers is None:
            return WorkingCopy.open(self.root(i), store=self.store, concurrency=CONCURRENCY)
        return OverlayWorkingCopy.mount(
            self.repo,
            self.lowers,
            self.lower_of[i],
            self.layers[i],
            concurrency=CONCURRENCY,
            group=self.group_of[i],
        )

    def _remove_copy(self, i: int) -> None:
        if self.lowers is None:
            shutil.rmtree(self.root(i))
            return
        unmount(self.root(i))
        shutil.rmtree(self.layers[i])

    def _copy_args(self, i: int) -> dict[str, Any]:
        """How a child process opens copy ``i``."""
        args: dict[str, Any] = {"root": str(self.root(i))}
        if self.lowers is not None:
            lower = self.lower_of[i]
            args["overlay"] = {
                "volume": self.repo.volume_id,
                "lowers": str(self.lowers.root),
                "cache": str(self.lowers.cache.root),
                "layers": str(self.layers[i]),
                "lower": [lower.volume_id, lower.seq],
                "group": self.group_of[i],
            }
        return args

    def note(self, step: str) -> None:
        self.steps.append(step)

    def teardown(self) -> None:
        try:
            if self.steps:
                self.check_history()
        finally:
            for copy in self.copies:
                copy.close(final_commit=False)
            for layer in self.every_layer:
                unmount(layer / "merged", lazy=True)
            for target in mounts_under(self.dir):  # the snapshots' images
                unmount(target, lazy=True)
            if self.lowers is not None:
                self.lowers.close()
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- changes to a copy's files -----------------------------------------------------------

    def _clear_way(self, i: int, path: str) -> None:
        """Make ``path``'s parent a directory, removing files that stand where it goes."""
        root = self.root(i)
        for a in ancestors(path):
            target = root / a
            if target.is_file():
                target.unlink()
        (root / path).parent.mkdir(parents=True, exist_ok=True)

    def _local(self, i: int, change: Callable[[dict[str, bytes], set[str]], None]) -> None:
        tree = self.models[i].tree
        files, dirs = dict(tree.files), set(tree.dirs)
        change(files, dirs)
        self.models[i].tree = Tree(files, frozenset(dirs))

    @rule(i=COPY, path=st.sampled_from(PATHS), tag=TAG, large=LARGE)
    def write(self, i: int, path: str, tag: int, large: bool) -> None:
        """Write a file; a file in the way of its directories, or a directory at its path,
        is removed first (file <-> directory replacement)."""
        self._write(i, path, tag, large)

    @rule(i=COPY, data=st.data(), tag=TAG, large=LARGE)
    def edit(self, i: int, data: st.DataObject, tag: int, large: bool) -> None:
        """Change a file the copy has."""
        existing = sorted(self.models[i].tree.files)
        if existing:
            self._write(i, data.draw(st.sampled_from(existing), label="path"), tag, large)

    def _write(self, i: int, path: str, tag: int, large: bool) -> None:
        data = content(tag, large)
        if self.models[i].tree.files.get(path) == data:
            # Rewriting the same bytes is its own case (test_regressions); here a write
            # always changes the file.
            data = content((tag + 1) % 6, large)
        self.note(f"write(copy={i}, {path!r}, tag={tag}, large={large})")
        target = self.root(i) / path
        if target.is_dir():
            shutil.rmtree(target)
        self._clear_way(i, path)
        with open(target, "wb") as f:  # in place when it exists: same inode, new content
            f.write(data)

        def change(files: dict[str, bytes], dirs: set[str]) -> None:
            for p in [p for p in files if p == path or under(p, path) or p in ancestors(path)]:
                del files[p]
            for d in [d for d in dirs if d == path or under(d, path)]:
                dirs.discard(d)
            dirs.update(ancestors(path))
            files[path] = data

        self._local(i, change)

    def rewrite_same(self, i: int, data: Any) -> None:
        """Write a file's own bytes over it (not a rule: see test_regressions)."""
        path = data.draw(st.sampled_from(sorted(self.models[i].tree.files)), label="path")
        self.note(f"rewrite_same(copy={i}, {path!r})")
        target = self.root(i) / path
        target.write_bytes(target.read_bytes())

    @rule(i=COPY, path=st.sampled_from(PATHS))
    def mkdir(self, i: int, path: str) -> None:
        """Make a directory (and its parents); a file at its path or in its way goes."""
        self.note(f"mkdir(copy={i}, {path!r})")
        target = self.root(i) / path
        if target.is_dir():
            return
        if target.is_file():
            target.unlink()
        self._clear_way(i, path)
        target.mkdir()

        def change(files: dict[str, bytes], dirs: set[str]) -> None:
            for p in [p for p in files if p == path or p in ancestors(path)]:
                del files[p]
            dirs.update([*ancestors(path), path])

        self._local(i, change)

    def _existing(self, i: int) -> list[str]:
        tree = self.models[i].tree
        return sorted([*tree.files, *tree.dirs])

    @rule(i=COPY, data=st.data())
    def delete(self, i: int, data: st.DataObject) -> None:
        """Delete a file, or ``rm -r`` a directory."""
        existing = self._existing(i)
        if not existing:
            return
        path = data.draw(st.sampled_from(existing), label="path")
        self.note(f"delete(copy={i}, {path!r})")
        target = self.root(i) / path
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()

        def change(files: dict[str, bytes], dirs: set[str]) -> None:
            for p in [p for p in files if p == path or under(p, path)]:
                del files[p]
            for d in [d for d in dirs if d == path or under(d, path)]:
                dirs.discard(d)

        self._local(i, change)

    @rule(i=COPY, data=st.data(), dst=st.sampled_from(PATHS))
    def rename(self, i: int, data: st.DataObject, dst: str) -> None:
        """Rename a file or a directory; whatever stands at the destination goes first."""
        existing = self._existing(i)
        if not existing:
            return
        src = data.draw(st.sampled_from(existing), label="src")
        if dst == src or under(dst, src) or under(src, dst):
            return
        self.note(f"rename(copy={i}, {src!r} -> {dst!r})")
        root = self.root(i)
        target = root / dst
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        self._clear_way(i, dst)
        try:
            os.rename(root / src, target)
        except OSError as exc:
            # An overlay without redirect_dir refuses to rename a directory the lower
            # layer has: `mv` copies it and removes the original instead, so do that.
            if exc.errno != errno.EXDEV:
                raise
            shutil.copytree(root / src, target, symlinks=True)
            shutil.rmtree(root / src)

        def change(files: dict[str, bytes], dirs: set[str]) -> None:
            moved_files = {p: d for p, d in files.items() if p == src or under(p, src)}
            moved_dirs = {d for d in dirs if d == src or under(d, src)}
            for p in [p for p in files if p == dst or under(p, dst) or p in ancestors(dst)]:
                del files[p]
            for d in [d for d in dirs if d == dst or under(d, dst)]:
                dirs.discard(d)
            for p in moved_files:
                files.pop(p, None)
            dirs.difference_update(moved_dirs)
            for p, body in moved_files.items():
                files[dst + p[len(src) :]] = body
            dirs.update(dst + d[len(src) :] for d in moved_dirs)
            dirs.update(ancestors(dst))

        self._local(i, change)

    # -- commit, reload, reopen, crash --------------------------------------------------------

    # Commits and reloads are what make copies meet, so each has two rules: twice as likely.
    @rule(i=COPY)
    def commit(self, i: int) -> None:
        """Commit as the node plugin's final commit does: refused because the copy's base
        was pruned, it reloads (keeping local changes) and commits again."""
        self._commit(i, retry=True)

    @rule(i=COPY)
    def commit_another(self, i: int) -> None:
        """Commit as a pod's background commits do: refused, the copy stays as it is."""
        self._commit(i, retry=False)

    @rule(i=COPY)
    def reload(self, i: int) -> None:
        self._reload(i)

    @rule(i=COPY)
    def reload_another(self, i: int) -> None:
        self._reload(i)

    def _commit(self, i: int, retry: bool = True) -> None:
        self.note(f"commit(copy={i})")
        model = self.models[i]
        self.log.settle(model)
        if self.log.stale(model):
            self._refused(i)
            if not retry:
                return
            self._reload(i)
            self._check_records(i)
            self.note(f"commit(copy={i})")
        try:
            result = self.copies[i].commit()
        except StaleBase as exc:
            raise Divergence(
                f"commit refused ({exc}); the model's base is {model.base}, the horizon "
                f"{self.log.horizon}:\n  " + "\n  ".join(self.steps)
            ) from exc
        published = self.log.commit(model)
        assert not result.deferred, f"commit deferred files nobody was writing: {result.deferred}"
        assert (result.seq is not None) == published, (
            f"commit published {result.seq}, the model expected "
            f"{'an entry' if published else 'nothing'}:\n  " + "\n  ".join(self.steps)
        )

    def _refused(self, i: int) -> None:
        """A commit from a base before the horizon: StaleBase, nothing published, every
        local change still in the copy."""
        model = self.models[i]
        try:
            result = self.copies[i].commit()
        except StaleBase:
            self.note("  -> StaleBase")
        else:
            raise Divergence(
                f"a copy based on commit {model.base}, before the horizon {self.log.horizon}, "
                f"committed (seq {result.seq}):\n  " + "\n  ".join(self.steps)
            )
        seq, _ = read_head(self.repo)
        assert seq == self.log.head_seq, (
            f"a refused commit moved the head to {seq}:\n  " + "\n  ".join(self.steps)
        )
        expect_same(
            f"copy {i} after its refused commit", model.tree, read_tree(self.root(i)), self.steps
        )

    def _reload(self, i: int) -> None:
        self.note(f"reload(copy={i})")
        self.log.settle(self.models[i])
        self.copies[i].reload()
        self.log.reload(self.models[i])

    @rule(i=COPY, crash=st.booleans())
    def reopen(self, i: int, crash: bool) -> None:
        """Reopen from disk: after a clean close, or after dropping the object unclosed."""
        self.note(f"reopen(copy={i}, crash={crash})")
        if not crash:
            self.copies[i].close(final_commit=False)
        self.copies[i] = self._open(i)

    @rule(i=COPY)
    def track(self, i: int) -> None:
        """Copy ``i``'s commits and reloads find changes from inotify events, as under
        autocommit (kvol.tracker), until it is reopened; overlay copies have their own way."""
        self.note(f"track(copy={i})")
        self.copies[i].track_changes()

    @rule(i=COPY, reuse=st.booleans(), grouped=st.booleans())
    def replace_pod(self, i: int, reuse: bool, grouped: bool = False) -> None:
        """The pod of copy ``i`` ends and a new one starts: the final commit as the node
        plugin makes it, the copy is removed, and a new copy of the head takes its place
        (overlay: over a new snapshot of the head, or with ``reuse`` the newest snapshot
        here, reloaded; ``grouped``: the new pod has an fsGroup)."""
        self.note(f"replace_pod(copy={i}, reuse={reuse}, grouped={grouped})")
        self._commit(i, retry=True)
        self.copies[i].close(final_commit=False)
        self._remove_copy(i)
        self.models[i] = self.log.new_copy()
        self.copies[i] = self._new_copy(i, reuse, grouped)

    def _child_args(self, op: str, k: int, when: str, **extra: Any) -> dict[str, Any]:
        record = self.dir / "points.jsonl"
        record.unlink(missing_ok=True)
        return {
            "store": self.child_spec,
            "op": op,
            "k": k,
            "when": when,
            "record": str(record),
            **extra,
        }

    def _child_command(self, args: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, **self.env.child_env, "PYTHONSAFEPATH": "1"}
        return [sys.executable, str(Path(__file__).with_name("killer.py")), json.dumps(args)], env

    def _points(self) -> list[dict[str, Any]]:
        record = self.dir / "points.jsonl"
        if not record.exists():
            return []
        return [json.loads(line) for line in record.read_text().splitlines()]

    def _run_killed(
        self, op: str, k: int, when: str, **extra: Any
    ) -> tuple[bool, list[dict[str, Any]], dict[str, Any]]:
        """Run ``op`` in a child killed at point ``k``: (finished, its points, its result)."""
        command, env = self._child_command(self._child_args(op, k, when, **extra))
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, timeout=120)
        points = self._points()
        if done.returncode == 0:
            return True, points, json.loads(done.stdout.decode().splitlines()[-1])
        assert done.returncode == -9, (
            f"{op} in a child failed (exit {done.returncode}): {done.stderr.decode()[-2000:]}"
        )
        return False, points, {}

    def _killed(
        self, i: int, op: str, k: int, when: str
    ) -> tuple[bool, list[dict[str, Any]], dict[str, Any]]:
        """Run ``op`` on copy ``i`` in a child killed at point ``k``; True if it finished."""
        self.copies[i].close(final_commit=False)
        try:
            return self._run_killed(op, k, when, **self._copy_args(i))
        finally:
            self.copies[i] = self._open(i)

    def _journal(self, i: int) -> bytes | None:
        """The copy's commit journal: there while a commit is not settled."""
        try:
            return (self.copies[i].meta_dir / COMMIT_JOURNAL_FILE).read_bytes()
        except FileNotFoundError:
            return None

    def _settled_by_child(
        self, i: int, journal: bytes | None, points: list[dict[str, Any]]
    ) -> None:
        """A child's lock settles the copy's killed commit, if it got that far: its journal
        is gone or replaced, or the index recorded the commit (the journal only waits to be
        dropped; a landed commit stays landed)."""
        model = self.models[i]
        if model.pending is None:
            return
        if self._journal(i) != journal:
            self.log.settle(model)
        elif any(_index_saved(p) for p in points):
            model.pending = None

    # One rule for every step that runs a child process (they cost the most): a commit or
    # reload killed, each twice as likely as a prune killed or a commit racing a prune.
    @rule(i=COPY, op=st.sampled_from(KILLED), k=POINT, when=WHEN, keep=KEEP)
    def kill(self, i: int, op: str, k: int, when: str, keep: int = 1) -> None:
        """SIGKILL a commit, a reload or ``kvol volume gc`` with a retention policy
        keeping the last ``keep`` commits in a child process at one of its points; or
        stop a commit at one of its points while such a gc runs ("race"), or such a gc
        while copy ``i`` commits ("race_prune")."""
        if op == "commit":
            self._kill_commit(i, k, when)
        elif op == "reload":
            self._kill_reload(i, k, when)
        elif op == "prune":
            self.kill_prune(keep, k, when)
        elif op == "race":
            self.race(i, keep, k, when)
        else:
            self.race_prune(i, keep, k, when)

    def _kill_commit(self, i: int, k: int, when: str) -> None:
        """SIGKILL a commit at its k-th store call or filesystem mutation, then reopen."""
        self.note(f"kill_commit(copy={i}, k={k}, {when})")
        journal = self._journal(i)
        finished, points, out = self._killed(i, "commit", k, when)
        self._settled_by_child(i, journal, points)
        model = self.models[i]
        stale = self.log.stale(model)
        landed_at = _landed(points)
        if out.get("stale"):
            if not stale:
                raise Divergence(
                    f"commit refused as stale; the model's base is {model.base}, the horizon "
                    f"{self.log.horizon}:\n  " + "\n  ".join(self.steps)
                )
            self.note("  -> StaleBase")
            return
        # A commit whose entry landed is a commit, even if the copy was killed before it
        # recorded it: the copy must recognise its own entry (its commit journal) rather
        # than publish the same changes again over what others wrote since.
        if finished or landed_at is not None:
            if stale:
                raise Divergence(
                    f"a copy based on commit {model.base}, before the horizon "
                    f"{self.log.horizon}, was not refused ({out or 'entry landed'}):\n  "
                    + "\n  ".join(self.steps)
                )
            before = Pending(self.log.head_seq + 1, model.view.copy(), model.base)
            self.log.commit(model)
            if not finished and not any(_index_saved(p) for p in points[landed_at:]):
                # Not recorded yet: the next commit or reload settles it.
                model.pending = before
        outcome = "finished" if finished else "killed"
        if landed_at is not None:
            outcome += ", entry landed"
        self.note(f"  -> {outcome}")

    def _kill_reload(self, i: int, k: int, when: str) -> None:
        """SIGKILL a reload at its k-th store call or filesystem mutation, then reopen.

        A reload cut short may leave each path as it was or as the reload makes it; a
        path it brought up to date must count as clean, one it did not reach keeps the
        copy's view of it. Anything else (a path in neither state) is a divergence.
        """
        self.note(f"kill_reload(copy={i}, k={k}, {when})")
        journal = self._journal(i)
        finished, points, _ = self._killed(i, "reload", k, when)
        self._settled_by_child(i, journal, points)
        model = self.models[i]
        if model.pending is not None:
            # Killed while settling a killed commit: the reload never began.
            self.note("  -> killed")
            return
        before = CopyModel(model.view.copy(), model.tree, model.base)
        after = CopyModel(model.view.copy(), model.tree, model.base)
        self.log.reload(after)
        if finished:
            self.models[i] = after
            self.note("  -> finished")
            return
        actual = read_tree(self.root(i))
        if not any(_reload_journal_written(p) for p in points):
            # A reload journals what it will touch before it touches anything: killed
            # before that, it changed nothing (a directory of the copy's own that the
            # volume now has too is still the copy's own).
            expect_same(
                "a copy whose reload died before its journal", before.tree, actual, self.steps
            )
            self.models[i] = before
        else:
            self.models[i] = mixed(before, after, actual, self.steps)
        # The base moves when the reload's index is saved, its last step.
        base = self.copies[i].index.base
        if base not in (before.base, after.base):
            raise Divergence(
                f"a killed reload left the copy based on {base}, neither {before.base} nor "
                f"{after.base}:\n  " + "\n  ".join(self.steps)
            )
        self.models[i].base = base
        self.note("  -> killed")

    # -- pruning ------------------------------------------------------------------------------

    def _grace(self) -> float:
        if self.env.can_age:
            return max(min_gc_grace(), repo_module.DEFAULT_GC_GRACE_SECONDS)
        return min_gc_grace()

    def _time_passes(self) -> None:
        """Filesystem store: every content object and pruning horizon is two grace periods
        old, as if that much time had passed since anything was written (elsewhere nothing
        ages: collection keeps every object, and pruning only moves the horizon)."""
        if not self.env.can_age:
            return
        old = time.time() - 2 * self._grace()
        volume = Path(self.child_spec["root"]) / "volumes" / self.repo.volume_id
        for sub in ("blobs", "packs", "horizon"):
            for dirpath, _, names in os.walk(volume / sub):
                for name in names:
                    os.utime(os.path.join(dirpath, name), (old, old))

    def _set_policy(self, keep: int) -> None:
        Volume.from_id(self.repo.volume_id, store=self.store).set_retention(keep_last=keep)

    def _stored_before(self, limit: int) -> list[str]:
        """Log entries and checkpoints still in the store before commit ``limit``."""
        repo = Repo(self.store, self.repo.volume_id)
        found = []
        for prefix in (repo.keys.log_prefix, repo.keys.checkpoint_prefix):
            for info in self.store.list(prefix):
                seq = parse_seq(info.key.rsplit("/", 1)[-1])
                if seq is not None and seq < limit:
                    found.append(info.key)
        return found

    @rule(keep=KEEP)
    def prune(self, keep: int) -> None:
        """``kvol volume gc`` with a policy keeping the last ``keep`` commits: prune, then
        collect. On a filesystem store time passed first: what is before every earlier
        horizon is deleted, and the content only it named is collected."""
        self.note(f"prune(keep_last={keep})")
        self._set_policy(keep)
        settled = self.log.horizon if self.env.can_age else 0
        self._time_passes()
        repo = Repo(self.store, self.repo.volume_id)
        report = prune_history(repo, grace_seconds=self._grace())
        repo.gc(self._grace())
        horizon = self.log.prune(keep)
        assert report.horizon == horizon == repo.horizon(), (
            f"pruning reported horizon {report.horizon} (store: {repo.horizon()}), the model's "
            f"is {horizon}:\n  " + "\n  ".join(self.steps)
        )
        left = self._stored_before(settled)
        assert not left, (
            f"pruned history still stored a grace after its horizon {settled}: {left}\n  "
            + "\n  ".join(self.steps)
        )

    def kill_prune(self, keep: int, k: int, when: str) -> None:
        """SIGKILL ``kvol volume gc`` (prune, then collect) at one of its store calls."""
        self.note(f"kill_prune(keep_last={keep}, k={k}, {when})")
        self._set_policy(keep)
        self._time_passes()
        old = self.log.horizon
        new = self.log.prune(keep)
        finished, _, _ = self._run_killed(
            "prune", k, when, volume=self.repo.volume_id, grace=self._grace()
        )
        horizon = Repo(self.store, self.repo.volume_id).horizon()
        if horizon not in (old, new) or (finished and horizon != new):
            raise Divergence(
                f"a {'finished' if finished else 'killed'} prune left the horizon at "
                f"{horizon}, the model's is {old} before, {new} after:\n  "
                + "\n  ".join(self.steps)
            )
        self.log.horizon = horizon
        self.note(f"  -> {'finished' if finished else 'killed'}, horizon {horizon}")

    def _paused_child(self, args: dict[str, Any]) -> tuple[subprocess.Popen[str], bool, str]:
        """Start a child that stops at its point: (the child, whether it stopped, the first
        line it printed)."""
        command, env = self._child_command({**args, "pause": True})
        with (self.dir / "child.err").open("wb") as err:
            child = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert child.stdout is not None
        first = child.stdout.readline()
        return child, first.strip() == "paused", first

    def _go_on(self, child: subprocess.Popen[str], paused: bool, first: str) -> dict[str, Any]:
        """Let a stopped child go on; its result."""
        if paused:
            assert child.stdin is not None
            child.stdin.write("\n")
            child.stdin.flush()
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0, (
            f"a child stopped at a point failed (exit {child.returncode}): "
            f"{(self.dir / 'child.err').read_text()[-2000:]}"
        )
        result: dict[str, Any] = json.loads((out if paused else first).splitlines()[-1])
        return result

    def race_prune(self, i: int, keep: int, k: int, when: str) -> None:
        """``kvol volume gc`` with a policy keeping the last ``keep`` commits stands still
        in a child at its k-th store call (time passed first, on a filesystem store) while
        copy ``i`` commits as the commit rule does, then goes on. The commit sees the
        horizon as it stands; the prune keeps what its policy says of the head it read."""
        self.note(f"race_prune(copy={i}, keep_last={keep}, k={k}, {when})")
        self._set_policy(keep)
        self._time_passes()
        old, head = self.log.horizon, self.log.head_seq
        child, paused, first = self._paused_child(
            self._child_args("prune", k, when, volume=self.repo.volume_id, grace=self._grace())
        )
        try:
            if paused:
                mid = Repo(self.store, self.repo.volume_id).horizon()
                if mid not in (old, self.log.pruned_to(keep, head)):
                    raise Divergence(
                        f"a stopped prune left the horizon at {mid}, the model's is {old}, "
                        f"or {self.log.pruned_to(keep, head)} once it moved:\n  "
                        + "\n  ".join(self.steps)
                    )
                self.log.horizon = mid
                self._commit(i)
        except BaseException:
            child.kill()
            child.wait()
            raise
        self._go_on(child, paused, first)
        horizon = Repo(self.store, self.repo.volume_id).horizon()
        allowed = {self.log.horizon, self.log.pruned_to(keep, head)}
        allowed.add(self.log.pruned_to(keep, self.log.head_seq))
        if horizon not in allowed:
            raise Divergence(
                f"a prune racing a commit left the horizon at {horizon}, the model allows "
                f"{sorted(allowed)}:\n  " + "\n  ".join(self.steps)
            )
        self.log.horizon = horizon
        self.note(f"  -> {'paused' if paused else 'not stopped'}, horizon {horizon}")

    def race(self, i: int, keep: int, k: int, when: str) -> None:
        """A commit in a child stands still at its k-th point while ``kvol volume gc``
        prunes (keeping the last ``keep`` commits) and collects, then goes on.

        The commit checks the horizon right before it publishes: stopped before that, a
        horizon that passed its base refuses it; stopped after, its entry lands, and the
        content its base named must still be there (the commits before the new horizon
        stay in the store a grace, so collection keeps what they name). Nothing ages
        meanwhile: a commit stalled longer than the grace is outside the guarantees.
        """
        model = self.models[i]
        if model.pending is not None:
            return  # the copy's lock would settle its killed commit in the race too
        self.note(f"race(copy={i}, keep_last={keep}, k={k}, {when})")
        self._set_policy(keep)
        base, horizon_before, changed = model.base, self.log.horizon, bool(model.local_changes())
        self.copies[i].close(final_commit=False)
        child, paused, first = self._paused_child(
            self._child_args("commit", k, when, **self._copy_args(i))
        )
        collected = 0
        try:
            if paused:
                repo = Repo(self.store, self.repo.volume_id)
                prune_history(repo, grace_seconds=self._grace())
                collected = repo.gc(self._grace()).objects_deleted
            result = self._go_on(child, paused, first)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            self.copies[i] = self._open(i)
        points = self._points()
        # Did the entry land, and did the commit check the horizon, before the prune ran?
        landed = _landed(points)
        stop = next((n for n, p in enumerate(points) if "paused" in p), None)
        pruned_first = stop is not None and (landed is None or landed > stop)
        guard = _guard_point(points, base)
        guard_first = stop is not None and guard is not None and points[stop]["paused"] > guard
        horizon_mid = self.log.prune(keep) if pruned_first else horizon_before
        if result.get("stale"):
            want = changed and (base < horizon_before or (base < horizon_mid and not guard_first))
            if not want:
                raise Divergence(
                    f"a racing commit was refused as stale; its base is {base}, the horizon "
                    f"{horizon_before}, then {horizon_mid}:\n  " + "\n  ".join(self.steps)
                )
            outcome = "StaleBase"
        elif result.get("conflict"):
            if not collected:
                raise Divergence(
                    "a racing commit failed on collected content, but nothing was collected:"
                    "\n  " + "\n  ".join(self.steps)
                )
            outcome = "content collected meanwhile, nothing published"
        else:
            if changed and (base < horizon_before or (base < horizon_mid and not guard_first)):
                raise Divergence(
                    f"a racing commit based on {base} published past the horizon "
                    f"{horizon_before}, then {horizon_mid}:\n  " + "\n  ".join(self.steps)
                )
            self.log.commit(model, horizon_before if guard_first else horizon_mid)
            outcome = f"seq {result.get('seq')}"
        if not pruned_first:
            # It ran after the commit landed (or the commit never stopped).
            if not paused:
                repo = Repo(self.store, self.repo.volume_id)
                prune_history(repo, grace_seconds=self._grace())
                repo.gc(self._grace())
            self.log.prune(keep)
        horizon = Repo(self.store, self.repo.volume_id).horizon()
        assert horizon == self.log.horizon, (
            f"the horizon is {horizon}, the model's {self.log.horizon}:\n  "
            + "\n  ".join(self.steps)
        )
        self.note(f"  -> {'paused' if paused else 'not stopped'}, {outcome}")

    # -- writers without a working copy, and garbage collection -------------------------------

    @rule(data=st.data())
    def sdk_rm(self, data: st.DataObject) -> None:
        """``Volume.remove_file(path, recursive=True)`` on the head (the SDK's and CLI's rm -r)."""
        head = self.log.state()
        existing = sorted([*head.files, *head.all_dirs()])
        if not existing:
            return
        path = data.draw(st.sampled_from(existing), label="path")
        self.note(f"sdk_rm({path!r})")
        Volume.from_id(self.repo.volume_id, store=self.store).remove_file(path, recursive=True)
        self.log.rm_from_head(path)

    @rule(paths=st.sets(st.sampled_from(PATHS), min_size=1, max_size=4), tag=TAG, large=LARGE)
    def sdk_put(self, paths: set[str], tag: int, large: bool) -> None:
        """``batch_upload(force=True)`` of files (the SDK's and CLI's put): puts only, so
        their new directories are implied, not recorded."""
        head = self.log.state()
        targets = sorted(p for p in paths if p not in head.all_dirs())
        targets = [p for p in targets if not any(a in targets for a in ancestors(p))]
        if not targets:
            return
        files = {p: content((tag + n) % 6, large) for n, p in enumerate(targets)}
        self.note(f"sdk_put({sorted(files)}, tag={tag}, large={large})")
        volume = Volume.from_id(self.repo.volume_id, store=self.store)
        with volume.batch_upload(force=True) as batch:
            for path, data in files.items():
                batch.put_file(io.BytesIO(data), path)
        self.log.publish([("put", p, d) for p, d in files.items()])

    @rule()
    def gc(self) -> None:
        """Collect garbage with a short grace (on a filesystem store, after time passed):
        nothing any commit refers to may go."""
        self.note("gc()")
        self._time_passes()
        Repo(self.store, self.repo.volume_id).gc(self._grace())

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def copies_match(self) -> None:
        for i in range(COPIES):
            expect_same(f"copy {i}", self.models[i].tree, read_tree(self.root(i)), self.steps)

    @invariant()
    def bases_match(self) -> None:
        """Each copy is based where the model says (before a killed commit it has not
        recorded yet): the base decides whether its commit is refused."""
        for i, model in enumerate(self.models):
            want = model.pending.base if model.pending is not None else model.base
            got = self.copies[i].index.base
            assert got == want, (
                f"copy {i} is based on commit {got}, the model's base is {want}:\n  "
                + "\n  ".join(self.steps)
            )

    @invariant()
    def head_matches(self) -> None:
        seq, tree = read_head(self.repo)
        assert seq == self.log.head_seq, (
            f"head is {seq}, the model's is {self.log.head_seq}:\n  " + "\n  ".join(self.steps)
        )
        expect_same("the head", self.log.state().tree(), tree, self.steps)

    @invariant()
    def records_are_the_volumes(self) -> None:
        states: dict[int, dict[str, tuple[str, tuple[Any, ...]]]] = {}
        for i in range(COPIES):
            self._check_records(i, states)

    def _check_records(
        self, i: int, states: dict[int, dict[str, tuple[str, tuple[Any, ...]]]] | None = None
    ) -> None:
        """Every file record copy ``i`` keeps is the volume's at its base or at a later
        commit. A record of content the volume dropped before the base names packs that a
        prune may have collected, and a commit that reuses it publishes a file nobody can
        read; checked here, such a record is caught where it is kept, not at a later build."""
        index = self.copies[i].index
        if index.base < self.log.horizon:
            return  # its base is gone: nothing left to say where a record came from
        repo = Repo(self.store, self.repo.volume_id)
        # Shared by the copies of one check (parts and hash: what a commit would reuse).
        states = {} if states is None else states
        seqs = range(max(index.base, 1), self.log.head_seq + 1)
        for seq in seqs:
            if seq not in states:
                states[seq] = {p: (r.hash, r.parts) for p, r in repo.state(seq).files.items()}
        for path in index.paths():
            entry = index.entry(path)
            if entry is None or entry.record is None:
                continue
            kept = (entry.record.hash, entry.record.parts)
            assert any(states[seq].get(path) == kept for seq in seqs), (
                f"copy {i} keeps a record of {path!r} that the volume did not have at its "
                f"base {index.base} or since:\n  " + "\n  ".join(self.steps)
            )

    @invariant()
    def store_whole(self) -> None:
        check_store(self.repo)

    def check_all(self) -> None:
        self.copies_match()
        self.bases_match()
        self.head_matches()
        self.records_are_the_volumes()
        self.store_whole()

    def check_history(self) -> None:
        """Nothing committed is ever lost: every retained commit still reads as the
        model's; one before the horizon says it was pruned."""
        for seq in range(1, self.log.head_seq + 1):
            if seq < self.log.horizon:
                try:
                    if seq == 1:
                        # Restoring it says so too, and publishes nothing.
                        Repo(self.store, self.repo.volume_id).restore(seq)
                    else:
                        read_head(self.repo, seq)
                except HistoryPruned:
                    continue
                raise Divergence(
                    f"commit {seq} still reads, before the horizon {self.log.horizon}:\n  "
                    + "\n  ".join(self.steps)
                )
            _, tree = read_head(self.repo, seq)
            expect_same(f"commit {seq}", self.log.state(seq).tree(), tree, self.steps)


def _landed(points: list[dict[str, Any]]) -> int | None:
    """Where in a child's points its commit's log entry landed."""
    return next(
        (
            n
            for n, p in enumerate(points)
            if p.get("kind") == "store.put_if_absent"
            and "/log/" in p.get("detail", "")
            and p.get("result") is True
        ),
        None,
    )


def _reload_journal_written(point: dict[str, Any]) -> bool:
    return (
        "done" in point
        and point.get("kind") == "fs.write_atomically"
        and point.get("detail", "").endswith("/" + JOURNAL_FILE)
    )


def _index_saved(point: dict[str, Any]) -> bool:
    """A save of the index done: written whole, or its delta."""
    return (
        "done" in point
        and point.get("kind") == "fs.write_atomically"
        and point.get("detail", "").endswith(("/" + INDEX_FILE, "/" + INDEX_FILE + DELTA_SUFFIX))
    )


def _guard_point(points: list[dict[str, Any]], base: int) -> int | None:
    """The point right after which a commit checks the horizon: the store call that finds
    its base in the log, or the write of its journal when it has no base (no call between:
    a horizon check is a listing, not a point)."""
    journal: int | None = next(
        (
            int(p["done"])
            for p in points
            if "done" in p
            and p.get("kind") == "fs.write_atomically"
            and p.get("detail", "").endswith("/" + COMMIT_JOURNAL_FILE)
        ),
        None,
    )
    if journal is None:
        return None
    return journal + 1 if base > 0 else journal


def mixed(before: CopyModel, after: CopyModel, actual: Tree, steps: list[str]) -> CopyModel:
    """The copy after a reload cut short: each path as before or as after the reload.

    Where the disk already shows the reload's result, the view takes the head's record of
    that path (the download counts as clean); elsewhere it keeps what the copy saw.
    """

    def at(tree: Tree, path: str) -> Any:
        if path in tree.files:
            return ("file", short(tree.files[path]))
        return ("dir",) if path in tree.dirs else None

    view = VolumeState()
    kept_implied: set[str] = set()
    paths = set(before.tree.files) | before.tree.dirs | set(after.tree.files) | after.tree.dirs
    paths |= set(actual.files) | actual.dirs
    paths |= set(before.view.files) | before.view.all_dirs()
    paths |= set(after.view.files) | after.view.all_dirs()
    bad = {}
    for path in sorted(paths):
        got = at(actual, path)
        if got == at(after.tree, path):
            source = after.view
        elif got == at(before.tree, path):
            source = before.view
        elif got is None and _kinds_differ(at(before.tree, path), at(after.tree, path)):
            # A directory and a file swap places in two moves (the directory goes first,
            # emptied, then the file is moved in): a kill between them leaves neither. The
            # copy records the path as absent, and its next reload writes the new one.
            continue
        else:
            bad[path] = (at(before.tree, path), at(after.tree, path), got)
            continue
        if path in source.files:
            view.files[path] = source.files[path]
        if path in source.dirs:
            view.dirs.add(path)
        elif path in source.all_dirs() and path in actual.dirs:
            kept_implied.add(path)
    # A directory the volume implied, kept on disk while the reload removed what implied
    # it: the copy still knows it as the volume's (it did not make it).
    view.seen_dirs = kept_implied - view.all_dirs()
    if bad:
        raise Divergence(
            f"a killed reload left paths in neither the old nor the new state "
            f"(path: before, after, actual): {bad}\nsteps so far:\n  " + "\n  ".join(steps)
        )
    return CopyModel(view, actual)


def _kinds_differ(before: Any, after: Any) -> bool:
    return before is not None and after is not None and before[0] != after[0]


def machine_for(env: Env) -> type[VolumeMachine]:
    return type(f"VolumeMachine_{env.kind}", (VolumeMachine,), {"env": env})


class _Chosen:
    """Stands for hypothesis's ``data`` when a recorded example is replayed."""

    def __init__(self, value: str) -> None:
        self.value = value

    def draw(self, strategy: Any, label: str | None = None) -> str:
        return self.value


def replay(env: Env, steps: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Run recorded steps, with every invariant after each, as hypothesis would; returns
    the machine's notes of what happened (a kill's "-> finished" or "-> killed").

    A step is ``(rule, arguments)``; a rule that draws a path takes it as ``chosen``.
    """
    machine = machine_for(env)()
    try:
        _run(machine, steps)
    finally:
        machine.teardown()
    return machine.steps


def _run(machine: VolumeMachine, steps: list[tuple[str, dict[str, Any]]]) -> None:
    machine.check_all()
    for name, kwargs in steps:
        args = dict(kwargs)
        if "chosen" in args:
            args["data"] = _Chosen(args.pop("chosen"))
        getattr(machine, name)(**args)
        machine.check_all()


def horizon_check_point(env: Env, steps: list[tuple[str, dict[str, Any]]], i: int) -> int:
    """After ``steps``, the point of copy ``i``'s commit right after which it checks the
    horizon (a race stopped at a later point finds it checked)."""
    machine = machine_for(env)()
    try:
        _run(machine, steps)
        base = machine.models[i].base
        finished, points, _ = machine._killed(i, "commit", 10_000, "before")
        point = _guard_point(points, base)
        assert finished and point is not None, points
        return point
    finally:
        machine.teardown()
