"""A reference model of a volume's log and of working copies over it.

Written to be obviously right rather than fast; it shares no code with kvol. The
semantics are the ones DESIGN.md gives:

- A volume is a log of entries; its state at a commit is the entries up to it applied in
  order. An entry is a list of operations: ``put`` a file, ``mkdir``, ``unlink`` a file
  (a directory at that path is left alone) and ``rmdir`` an explicit directory (only if
  nothing is left under it). Last write wins per path, and a file put where a directory
  is removes that directory's tree, and a directory made where a file is removes the file.
- A working copy holds a tree (files and every directory) and a *view*: the volume as the
  copy last saw it (its base plus its own commits). Its local changes are exactly the
  difference between the two. A commit publishes that difference and nothing else: puts
  of changed files and new directories, and for deletions only the files and explicit
  directories the copy saw (so a file another writer added under a deleted directory
  survives). A reload makes the view the head and the tree the head with the local
  changes applied on top: no uncommitted change is lost, and a local file beats a remote
  directory at its path until it is committed (then commit order decides). What a local
  change hides of the head stays out of the view: the copy never had it, so its commits
  never delete it, and its next reload brings it if the local change is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: ("put", path, data) | ("mkdir", path) | ("unlink", path) | ("rmdir", path)
Op = tuple[str, ...] | tuple[str, str, bytes]


def ancestors(path: str) -> list[str]:
    """Proper ancestors, outermost first: "a/b/c" -> ["a", "a/b"]."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def under(path: str, directory: str) -> bool:
    """Is ``path`` strictly inside ``directory``?"""
    return path.startswith(directory + "/")


def _deepest_first(path: str) -> tuple[int, str]:
    return (-path.count("/"), path)


def _outermost_first(path: str) -> tuple[int, str]:
    return (path.count("/"), path)


@dataclass(frozen=True)
class Tree:
    """A directory tree as a working copy holds it on disk: files and every directory."""

    files: dict[str, bytes]
    dirs: frozenset[str]

    def is_dir(self, path: str) -> bool:
        return path in self.dirs

    def describe(self) -> dict[str, str]:
        shown = {p: f"file:{short(d)}" for p, d in self.files.items()}
        shown.update({d: "dir" for d in self.dirs})
        return dict(sorted(shown.items()))


def short(data: bytes) -> str:
    """A content as a person reads it: its tag, and its size when it is a large one."""
    head = data[: data.index(b">") + 1] if b">" in data[:8] else data[:8]
    return f"{head.decode('latin-1')}({len(data)}B)"


@dataclass
class VolumeState:
    """Files and explicit directories of a volume (others are implied by their files)."""

    files: dict[str, bytes] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    #: Directories a copy knows as the volume's although nothing in this view implies
    #: them (a reload cut short removed their files and kept them, or made them before
    #: writing their files): the copy neither made them nor emptied them by deleting what
    #: it saw, so its commits never publish them (see ``changes``).
    seen_dirs: set[str] = field(default_factory=set)

    def copy(self) -> VolumeState:
        return VolumeState(dict(self.files), set(self.dirs), set(self.seen_dirs))

    def all_dirs(self) -> set[str]:
        found = set(self.dirs)
        for path in [*self.files, *self.dirs]:
            found.update(ancestors(path))
        return found

    def tree(self) -> Tree:
        return Tree(dict(self.files), frozenset(self.all_dirs()))

    def _remove_tree(self, path: str) -> None:
        self.files.pop(path, None)
        self.dirs.discard(path)
        self.seen_dirs = {d for d in self.seen_dirs if d != path and not under(d, path)}
        for p in [p for p in self.files if under(p, path)]:
            del self.files[p]
        self.dirs = {d for d in self.dirs if not under(d, path)}

    def apply(self, op: Op) -> None:
        kind, path = op[0], op[1]
        if kind == "unlink":
            self.files.pop(path, None)
            return
        self.seen_dirs.discard(path)
        if kind == "rmdir":
            busy = any(under(p, path) for p in [*self.files, *self.dirs])
            if path in self.dirs and not busy:
                self.dirs.discard(path)
            return
        # put and mkdir: a file at an ancestor, or anything at the path itself, gives way.
        for a in ancestors(path):
            if a in self.files:
                del self.files[a]
        if kind == "put":
            data = op[2]
            assert isinstance(data, bytes)
            if path in self.all_dirs():
                self._remove_tree(path)
            self.files[path] = data
        elif kind == "mkdir":
            self.files.pop(path, None)
            self.dirs.add(path)
        else:
            raise AssertionError(f"unknown op {op!r}")

    def applied(self, ops: list[Op]) -> VolumeState:
        state = self.copy()
        for op in ops:
            state.apply(op)
        return state


def changes(view: VolumeState, tree: Tree) -> list[Op]:
    """What a copy whose volume is ``view`` and whose disk holds ``tree`` publishes.

    Deletions name what the copy saw; every directory the copy made is published. A
    directory of the view that the copy kept is published only when nothing else the
    commit leaves in the volume keeps it (its files were all deleted here): so the volume
    ends up exactly as the copy is, with no directory recorded that something else implies.
    """
    ops: list[Op] = [("unlink", p) for p in sorted(view.files) if p not in tree.files]
    ops += [("rmdir", d) for d in sorted(view.dirs - set(tree.dirs), key=_deepest_first)]
    puts: list[Op] = [
        ("put", p, d) for p, d in sorted(tree.files.items()) if view.files.get(p) != d
    ]
    made: list[Op] = [
        ("mkdir", d)
        for d in sorted(tree.dirs - view.all_dirs() - view.seen_dirs, key=_outermost_first)
    ]
    kept = view.applied(ops + made + puts).all_dirs()
    emptied: list[Op] = [
        ("mkdir", d) for d in sorted(tree.dirs - kept - view.seen_dirs, key=_outermost_first)
    ]
    return ops + sorted(made + emptied, key=lambda op: _outermost_first(op[1])) + puts


def delete_seen(state: VolumeState, path: str) -> list[Op]:
    """What a writer publishes to remove ``path`` (a file or a tree) as it sees ``state``."""
    ops: list[Op] = [("unlink", p) for p in sorted(state.files) if p == path or under(p, path)]
    ops += [
        ("rmdir", d) for d in sorted(state.dirs, key=_deepest_first) if d == path or under(d, path)
    ]
    return ops


@dataclass(frozen=True)
class Pending:
    """A killed commit whose entry landed at ``seq``, not yet recorded by its copy: the
    copy's view and base before it."""

    seq: int
    view: VolumeState
    base: int


@dataclass
class CopyModel:
    """What one working copy must hold: its view of the volume and its tree on disk."""

    view: VolumeState
    tree: Tree
    #: The commit the copy is based on (see the module docstring).
    base: int = 0
    pending: Pending | None = None

    def local_changes(self) -> list[Op]:
        return changes(self.view, self.tree)


@dataclass
class LogModel:
    """The volume: every published entry, in order (entry ``i`` is commit ``i + 1``)."""

    entries: list[list[Op]] = field(default_factory=list)
    #: Where retained history begins (0: nothing pruned).
    horizon: int = 0

    @property
    def head_seq(self) -> int:
        return len(self.entries)

    def state(self, seq: int | None = None) -> VolumeState:
        state = VolumeState()
        for ops in self.entries[: self.head_seq if seq is None else seq]:
            for op in ops:
                state.apply(op)
        return state

    def publish(self, ops: list[Op]) -> None:
        assert ops
        self.entries.append(list(ops))

    # -- working copies ---------------------------------------------------------------

    def new_copy(self) -> CopyModel:
        head = self.state()
        return CopyModel(head, head.tree(), self.head_seq)

    def stale(self, copy: CopyModel, horizon: int | None = None) -> bool:
        """Would the copy's commit be refused (StaleBase), checking the horizon (or
        ``horizon``, where it was when the commit looked)? Only a commit with something
        to publish checks its base."""
        seen = self.horizon if horizon is None else horizon
        return copy.base < seen and bool(copy.local_changes())

    def settle(self, copy: CopyModel) -> None:
        """The copy's next commit or reload settles a killed commit whose entry landed."""
        pending, copy.pending = copy.pending, None
        if pending is not None and pending.seq < self.horizon:
            copy.view, copy.base = pending.view, pending.base

    def commit(self, copy: CopyModel, horizon: int | None = None) -> bool:
        """Publish the copy's local changes; False when there is nothing to publish.
        ``horizon``: where the horizon was when the commit checked it (a prune may have
        moved it since: the entry still lands, after the head)."""
        ops = copy.local_changes()
        if not ops:
            return False
        assert not self.stale(copy, horizon), "model: a commit from a pruned base"
        if copy.base == self.head_seq:
            copy.base = self.head_seq + 1
        self.publish(ops)
        copy.view = copy.view.applied(ops)
        # One removed here is no longer known: nothing of it is left to keep out of commits.
        copy.view.seen_dirs &= copy.tree.dirs
        # The model's own check: applying what a copy publishes to what it saw gives
        # exactly what it holds (with the directories it knows as the volume's though
        # nothing implies them, which no commit publishes: see VolumeState.seen_dirs).
        rebuilt = copy.view.tree()
        rebuilt = Tree(rebuilt.files, rebuilt.dirs | copy.view.seen_dirs)
        assert rebuilt == copy.tree, "model: a commit's ops do not rebuild the tree"
        return True

    def reload(self, copy: CopyModel) -> None:
        local = copy.local_changes()
        head = self.state()
        copy.tree = head.applied(local).tree()
        # What a local file or directory hides of the head (another writer's tree under
        # the copy's file, or file where the copy made a directory) the copy never had:
        # it stays out of the view, so no commit of the copy names it as deleted.
        deletions = [op for op in local if op[0] in ("unlink", "rmdir")]
        shown = head.applied(deletions)
        kept = head.applied(local)
        view = head.copy()
        for path in set(shown.files) - set(kept.files):
            del view.files[path]
        view.dirs -= shown.dirs - kept.dirs
        copy.view = view
        copy.base = self.head_seq

    def prune(self, keep_last: int) -> int:
        """Keep the last ``keep_last`` commits: returns the horizon (it only moves forward)."""
        self.horizon = self.pruned_to(keep_last, self.head_seq)
        return self.horizon

    def pruned_to(self, keep_last: int, head: int) -> int:
        """The horizon after a prune keeping the last ``keep_last`` commits of ``head``."""
        return max(self.horizon, head - keep_last + 1, 1) if head else self.horizon

    def rm_from_head(self, path: str) -> bool:
        """The SDK's ``remove_file(path, recursive=True)``: deletes what the head holds."""
        ops = delete_seen(self.state(), path)
        if not ops:
            return False
        self.publish(ops)
        return True
