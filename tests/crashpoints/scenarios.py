"""The operations the crash harness kills, and the oracle that judges what a kill left.

Each scenario builds its volume from scratch in the point's directory (``setup``, not
counted), runs one operation (``op``, every event counted and one of them fatal), and then,
in another process, checks what the crash left (``oracle``): the volume is exactly the state
before the operation or the state after it, read back through a fresh working copy; fsck
finds no damage; every uncommitted change is still in the working copy, and the next commit
(from the reopened copy) publishes all of it; retrying the operation reaches the new state;
reload and restore still work.

Trees are plain dicts (path -> content) plus a set of directories, so what "the old state"
and "the new state" are is written down here, independently of kvol.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvol import paths
from kvol.repo import Repo
from kvol.store import FilesystemStore, Store, open_store
from kvol.workcopy import WorkingCopy

#: Small chunks, so a few hundred KiB make a multi-chunk file.
CHUNK = 64 * 1024
#: Every file of a tree gets an mtime from here on, far from "now": nothing is ever racy,
#: so which files a commit reads (and so its events) does not depend on timing.
EPOCH_NS = 1_600_000_000 * 10**9
NAMESPACE = "team-a"
VOLUME = "data"


@dataclass
class Tree:
    """Files (path -> bytes) and every directory (explicit or implied)."""

    files: dict[str, bytes] = field(default_factory=dict)
    empty_dirs: set[str] = field(default_factory=set)

    def copy(self) -> Tree:
        return Tree(dict(self.files), set(self.empty_dirs))

    def dirs(self) -> set[str]:
        found = set(self.empty_dirs)
        for p in list(self.files) + list(self.empty_dirs):
            found.update(paths.ancestors(p))
        return found

    def remove_tree(self, top: str) -> None:
        for p in [p for p in self.files if paths.is_under(p, top)]:
            del self.files[p]
        self.empty_dirs = {d for d in self.empty_dirs if not paths.is_under(d, top)}

    def key(self) -> tuple[dict[str, bytes], set[str]]:
        return self.files, self.dirs()


def _bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def base_tree(long: bool) -> Tree:
    t = Tree()
    t.files = {
        "a.txt": b"alpha\n",
        "mod.txt": b"to be modified\n",
        "del.txt": b"to be deleted\n",
        "keep/k1.txt": b"kept one\n",
        "keep/k2.txt": b"kept two\n",
        "docs/d1.txt": b"doc one\n",
        "docs/sub/d2.txt": b"doc two\n",
        "docs/sub/deep/d3.txt": b"doc three\n",
        # Over the pack threshold (256 KiB): stored as chunks of CHUNK bytes.
        "big.bin": _bytes(1, 5 * CHUNK + 123),
    }
    t.empty_dirs = {"empty"}
    if long:
        for i in range(40):
            t.files[f"many/f{i:02d}.txt"] = f"file {i}\n".encode() * (i + 1)
        for i in range(6):
            t.files[f"docs/more/m{i}.txt"] = _bytes(100 + i, 1000 + i)
        t.files["huge.bin"] = _bytes(2, 24 * CHUNK + 7)
    return t


def commit_changes(t: Tree, long: bool) -> Tree:
    """What a writer does to ``t`` before committing: add, modify, delete, rm -r, mkdir."""
    n = t.copy()
    n.files["new/n1.txt"] = b"new one\n"
    n.files["new/n2.txt"] = b"new two\n"
    n.files["big2.bin"] = _bytes(3, 4 * CHUNK + 5)
    n.files["mod.txt"] = b"modified, and longer than before\n"
    big = bytearray(n.files["big.bin"])
    big[2 * CHUNK + 10 : 2 * CHUNK + 20] = b"X" * 10  # one chunk changes
    n.files["big.bin"] = bytes(big)
    del n.files["del.txt"]
    n.remove_tree("docs")
    n.empty_dirs.add("newempty")
    if long:
        for i in range(0, 40, 3):
            n.files[f"many/f{i:02d}.txt"] = b"changed\n"
        for i in range(20):
            n.files[f"new/bulk/b{i:02d}.dat"] = _bytes(200 + i, 3000)
        n.files["huge2.bin"] = _bytes(4, 16 * CHUNK)
    return n


def other_writer_changes(t: Tree) -> Tree:
    """Local changes of a second copy, to files the first writer's changes never touch."""
    n = t.copy()
    n.files["b-new.txt"] = b"written by the second copy\n"
    n.files["keep/k1.txt"] = b"kept one, changed by the second copy\n"
    return n


def upload_tree(long: bool) -> Tree:
    t = Tree()
    t.files = {
        "u1.txt": b"upload one\n",
        "sub/u2.txt": b"upload two\n",
        "sub/deeper/u3.txt": b"upload three\n",
        "ubig.bin": _bytes(5, 4 * CHUNK + 1),
    }
    t.empty_dirs = {"emptyd"}
    if long:
        for i in range(30):
            t.files[f"sub/many/u{i:02d}.txt"] = _bytes(300 + i, 500 + i)
        t.files["uhuge.bin"] = _bytes(6, 20 * CHUNK)
    return t


def under(prefix: str, t: Tree) -> Tree:
    return Tree(
        {f"{prefix}/{p}": data for p, data in t.files.items()},
        {f"{prefix}/{d}" for d in t.empty_dirs} | {prefix},
    )


def merge(a: Tree, b: Tree) -> Tree:
    return Tree({**a.files, **b.files}, a.empty_dirs | b.empty_dirs)


# -- trees on disk ----------------------------------------------------------------------------


def write_tree(root: Path, t: Tree, *, stamp: int = 0) -> None:
    """Make ``root`` hold exactly ``t`` (outside ``.kvol``), with fixed mtimes."""
    root.mkdir(parents=True, exist_ok=True)
    have = read_tree(root)
    for p in sorted(set(have.files) - set(t.files)):
        (root / p).unlink()
    for d in sorted(have.dirs() - t.dirs(), key=lambda d: -d.count("/")):
        if (root / d).is_dir():
            shutil.rmtree(root / d)
    for d in sorted(t.empty_dirs):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i, (p, data) in enumerate(sorted(t.files.items())):
        if have.files.get(p) == data:
            continue
        path = root / p
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        mtime = EPOCH_NS + (stamp * 1000 + i) * 10**9
        os.utime(path, ns=(mtime, mtime))


def read_tree(root: Path) -> Tree:
    """The files and directories under ``root``, without the reserved ``.kvol`` and
    without temporaries of interrupted writes (no scan ever reports them)."""
    t = Tree()
    for directory, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(directory, root)
        rel = "" if rel == "." else rel
        if not rel:
            dirnames[:] = [d for d in dirnames if d != paths.RESERVED]
        dirnames[:] = [d for d in dirnames if not d.startswith(".kvol-tmp-")]
        for name in filenames:
            if name.startswith(".kvol-tmp-"):
                continue
            p = f"{rel}/{name}" if rel else name
            full = os.path.join(directory, name)
            if os.path.islink(full):
                t.files[p] = b"<symlink>"
                continue
            with open(full, "rb") as f:
                t.files[p] = f.read()
        if rel and not dirnames and not [f for f in filenames if not f.startswith(".kvol-tmp-")]:
            t.empty_dirs.add(rel)
    return t


def diff(got: Tree, want: Tree) -> str:
    missing = sorted(set(want.files) - set(got.files))
    extra = sorted(set(got.files) - set(want.files))
    changed = sorted(p for p in set(got.files) & set(want.files) if got.files[p] != want.files[p])
    missing_dirs = sorted(want.dirs() - got.dirs())
    extra_dirs = sorted(got.dirs() - want.dirs())
    parts = []
    for label, items in (
        ("missing", missing),
        ("unexpected", extra),
        ("wrong content", changed),
        ("missing dirs", missing_dirs),
        ("unexpected dirs", extra_dirs),
    ):
        if items:
            more = f" (+{len(items) - 6})" if len(items) > 6 else ""
            parts.append(f"{label}: {', '.join(items[:6])}{more}")
    return "; ".join(parts) or "same"


def same(a: Tree, b: Tree) -> bool:
    return a.files == b.files and a.dirs() == b.dirs()


# -- context and checks -------------------------------------------------------------------------


@dataclass
class Ctx:
    dir: Path
    store_spec: dict[str, Any]
    long: bool
    params: dict[str, Any]

    @property
    def store_url(self) -> str:
        spec = self.store_spec
        if spec["kind"] == "fs":
            return f"file://{self.dir / 'store'}"
        return f"s3://{spec['bucket']}/{self.dir.name}/?endpoint={spec['endpoint']}"

    def open_store(self) -> Store:
        if self.store_spec["kind"] == "s3":
            os.environ.update(self.store_spec["env"])
        return open_store(self.store_url)

    def save(self, **values: Any) -> None:
        import json

        (self.dir / "setup.json").write_text(json.dumps(values))

    def load(self) -> dict[str, Any]:
        import json

        loaded: dict[str, Any] = json.loads((self.dir / "setup.json").read_text())
        return loaded


class Checker:
    """Collects what the oracle found wrong, step by step."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.outcome = "?"
        self.failed_step = False

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            self.failed_step = True
            tb = traceback.format_exception(exc)
            where = next(
                (line.strip() for line in reversed(tb) if "/kvol/" in line or "/csi/" in line),
                "",
            )
            self.problems.append(f"{name}: {type(exc).__name__}: {exc} [{where}]")

    def expect(self, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(message)

    def old_or_new(self, got: Tree, old: Tree, new: Tree) -> None:
        if same(got, old):
            self.outcome = "old"
        elif same(got, new):
            self.outcome = "new"
        else:
            self.outcome = "neither"
            self.problems.append(
                "the volume is neither the old nor the new state: "
                f"vs old: {diff(got, old)} | vs new: {diff(got, new)}"
            )

    def equal(self, got: Tree, want: Tree, what: str) -> None:
        if not same(got, want):
            self.problems.append(f"{what}: {diff(got, want)}")

    def fsck(self, repo: Repo, when: str) -> None:
        from kvol import fsck

        report = fsck.check(repo)
        for d in report.damage[:5]:
            self.problems.append(
                f"fsck {when}: {d.kind} {d.key}: {d.detail} (commits {list(d.commits)[:5]}, "
                f"files {list(d.files)[:5]})"
            )


def volume_tree(repo: Repo, scratch: Path) -> Tree:
    """The volume's head, read back through a fresh working copy."""
    where = scratch / f"fresh-{secrets.token_hex(4)}"
    wc = WorkingCopy.create(repo, where / "root", where / "meta", read_only=True)
    try:
        return read_tree(wc.root)
    finally:
        wc.close(final_commit=False)
        shutil.rmtree(where)


def state_tree(repo: Repo, seq: int) -> Tree:
    """The volume at ``seq``, read from the store (history must stay readable)."""
    state = repo.state(seq)
    reader = repo.reader()
    files = {p: reader.read(r) for p, r in state.files.items()}
    return Tree(files, set(state.dirs))


def new_volume(store: Store) -> Repo:
    return Repo.create(store, chunk_size=CHUNK)


def commit_tree(repo: Repo, workdir: Path, t: Tree, stamp: int) -> WorkingCopy:
    """A working copy in ``workdir`` whose committed head is ``t``."""
    if (workdir / "meta" / "config.json").exists():
        wc = WorkingCopy.open(workdir / "root", workdir / "meta", store=repo.store)
    else:
        wc = WorkingCopy.create(repo, workdir / "root", workdir / "meta")
    write_tree(wc.root, t, stamp=stamp)
    wc.commit(f"tree {stamp}")
    return wc


def open_copy(ctx: Ctx, store: Store, name: str) -> WorkingCopy:
    d = ctx.dir / name
    return WorkingCopy.open(d / "root", d / "meta", store=store, concurrency=1)


# -- scenarios ------------------------------------------------------------------------------------


class Scenario:
    name = ""
    #: Needs root and real mounts (the CSI node service).
    mounts = False

    def setup(self, ctx: Ctx) -> Any:
        raise NotImplementedError

    def op(self, ctx: Ctx, prepared: Any) -> None:
        raise NotImplementedError

    def oracle(self, ctx: Ctx, check: Checker) -> None:
        raise NotImplementedError


class Commit(Scenario):
    """A working copy commits new, modified and deleted files, an ``rm -r`` of a directory,
    a new empty directory, multi-chunk files and packed small files."""

    name = "commit"

    def setup(self, ctx: Ctx) -> Any:
        store = ctx.open_store()
        repo = new_volume(store)
        old = base_tree(ctx.long)
        wc = commit_tree(repo, ctx.dir / "w", old, 0)
        wc.close(final_commit=False)
        write_tree(ctx.dir / "w" / "root", commit_changes(old, ctx.long), stamp=1)
        ctx.save(volume=repo.volume_id)
        return store

    def op(self, ctx: Ctx, prepared: Any) -> None:
        open_copy(ctx, prepared, "w").commit("the change")

    def oracle(self, ctx: Ctx, check: Checker) -> None:
        old = base_tree(ctx.long)
        new = commit_changes(old, ctx.long)
        store, repo = _check_crashed(check, ctx, old, new)
        with check.step("reopen the copy"):
            wc = open_copy(ctx, store, "w")
            check.equal(read_tree(wc.root), new, "uncommitted changes lost from the copy")
        if check.failed_step:
            return
        landed = check.outcome == "new"
        with check.step("another writer commits"):
            third_writer(ctx, repo, "c")
        want = third_writer_changes(new)
        if not landed:
            # The crashed commit never landed: the later writer saw the old state, and the
            # retry is the last write of everything the copy changed.
            want.files["mod.txt"] = new.files["mod.txt"]
            want.files["big2.bin"] = new.files["big2.bin"]
        with check.step("commit again"):
            wc.commit("after the crash")
            check.equal(
                volume_tree(repo, ctx.dir),
                want,
                "after the next commit (a later writer's commit came in between)",
            )
        with check.step("reload"):
            wc.reload()
            check.equal(read_tree(wc.root), want, "the copy after a reload")
        _check_restore(check, repo, ctx, 1, old, "fsck after restore")


def third_writer_changes(t: Tree) -> Tree:
    """What a third writer commits after the crash, over files the crashed operation
    published (or was publishing): a copy still holding the older version must not bring
    it back."""
    n = t.copy()
    n.files["mod.txt"] = b"modified by a later writer\n"
    n.files["c-new.txt"] = b"a later writer's file\n"
    n.files.pop("a.txt", None)
    if "big2.bin" in n.files:
        del n.files["big2.bin"]
    return n


def third_writer(ctx: Ctx, repo: Repo, name: str) -> None:
    d = ctx.dir / name
    wc = WorkingCopy.create(repo, d / "root", d / "meta")
    write_tree(wc.root, third_writer_changes(read_tree(wc.root)), stamp=7)
    wc.commit("a later writer")
    wc.close(final_commit=False)


def _check_restore(check: Checker, repo: Repo, ctx: Ctx, seq: int, want: Tree, what: str) -> None:
    with check.step(f"restore {seq}"):
        repo.restore(seq)
        check.equal(volume_tree(repo, ctx.dir), want, f"the volume after restore of {seq}")
    with check.step(what):
        check.fsck(repo, "after restore")


def _check_crashed(check: Checker, ctx: Ctx, old: Tree, new: Tree) -> tuple[Store, Repo]:
    """What every oracle checks first, on the volume opened afresh: it holds exactly the
    state before the operation or the one after it, and fsck finds no damage."""
    store = ctx.open_store()
    repo = Repo(store, ctx.load()["volume"])
    with check.step("read the volume"):
        check.old_or_new(volume_tree(repo, ctx.dir), old, new)
    with check.step("fsck"):
        check.fsck(repo, "after the crash")
    return store, repo


def _seeded_volume(ctx: Ctx) -> tuple[Store, Repo]:
    """A new volume whose one commit is the base tree."""
    store = ctx.open_store()
    repo = new_volume(store)
    commit_tree(repo, ctx.dir / "seed", base_tree(ctx.long), 0).close(final_commit=False)
    return store, repo


def _two_commits(ctx: Ctx) -> tuple[Store, Repo]:
    """A new volume with history: the base tree, then the commit's changes over it."""
    store = ctx.open_store()
    repo = new_volume(store)
    old = base_tree(ctx.long)
    wc = commit_tree(repo, ctx.dir / "w", old, 0)
    commit_tree(repo, ctx.dir / "w", commit_changes(old, ctx.long), 1)
    wc.close(final_commit=False)
    return store, repo


class Reload(Scenario):
    """A second copy with its own uncommitted changes reloads another writer's commit."""

    name = "reload"

    def setup(self, ctx: Ctx) -> Any:
        store = ctx.open_store()
        repo = new_volume(store)
        old = base_tree(ctx.long)
        a = commit_tree(repo, ctx.dir / "a", old, 0)
        b = WorkingCopy.create(repo, ctx.dir / "b" / "root", ctx.dir / "b" / "meta")
        b.close(final_commit=False)
        write_tree(a.root, commit_changes(old, ctx.long), stamp=1)
        a.commit("the other writer")
        a.close(final_commit=False)
        write_tree(ctx.dir / "b" / "root", other_writer_changes(old), stamp=2)
        ctx.save(volume=repo.volume_id)
        return store

    def op(self, ctx: Ctx, prepared: Any) -> None:
        open_copy(ctx, prepared, "b").reload()

    def oracle(self, ctx: Ctx, check: Checker) -> None:
        old = base_tree(ctx.long)
        published = commit_changes(old, ctx.long)
        local = other_writer_changes(old)
        mine = {p: local.files[p] for p in ("b-new.txt", "keep/k1.txt")}
        want = merge(published, Tree(mine))
        store, repo = _check_crashed(check, ctx, published, published)
        with check.step("reopen the copy"):
            wc = open_copy(ctx, store, "b")
            got = read_tree(wc.root)
            lost = [p for p, data in mine.items() if got.files.get(p) != data]
            check.expect(not lost, f"uncommitted changes lost from the copy: {lost}")
        if check.failed_step:
            return
        with check.step("a third writer commits"):
            third_writer(ctx, repo, "c")
        want = merge(third_writer_changes(published), Tree(mine))
        with check.step("commit the local changes"):
            wc.commit("after the crash")
            check.equal(
                volume_tree(repo, ctx.dir),
                want,
                "the next commit did not publish exactly the copy's own changes (a third "
                "writer's commit came in between)",
            )
        with check.step("reload again"):
            wc.reload()
            check.equal(read_tree(wc.root), want, "the copy after reloading")
        _check_restore(check, repo, ctx, 1, old, "fsck after restore")


class SdkPut(Scenario):
    """``put`` of a local directory through the SDK (one batch upload)."""

    name = "put"

    def setup(self, ctx: Ctx) -> Any:
        store, repo = _seeded_volume(ctx)
        write_tree(ctx.dir / "upload", upload_tree(ctx.long), stamp=3)
        ctx.save(volume=repo.volume_id)
        return store, repo.volume_id

    def op(self, ctx: Ctx, prepared: Any) -> None:
        self.put(ctx, *prepared, force=False)

    @staticmethod
    def put(ctx: Ctx, store: Store, volume_id: str, *, force: bool) -> None:
        from kvol.volume import Volume

        with Volume.from_id(volume_id, store=store).batch_upload(force=force) as batch:
            batch.put_directory(ctx.dir / "upload", "/up")

    def oracle(self, ctx: Ctx, check: Checker) -> None:
        old = base_tree(ctx.long)
        new = merge(old, under("up", upload_tree(ctx.long)))
        store, repo = _check_crashed(check, ctx, old, new)
        with check.step("put again"):
            self.put(ctx, store, repo.volume_id, force=True)
            check.equal(volume_tree(repo, ctx.dir), new, "the volume after putting again")
        _check_restore(check, repo, ctx, 1, old, "fsck after restore")


class SdkRemove(Scenario):
    """``rm -r`` of a directory through the SDK."""

    name = "rm-r"

    def setup(self, ctx: Ctx) -> Any:
        store, repo = _seeded_volume(ctx)
        ctx.save(volume=repo.volume_id)
        return store, repo.volume_id

    def op(self, ctx: Ctx, prepared: Any) -> None:
        from kvol.volume import Volume

        store, volume_id = prepared
        Volume.from_id(volume_id, store=store).remove_file("docs", recursive=True)

    def oracle(self, ctx: Ctx, check: Checker) -> None:
        from kvol.errors import NotFound
        from kvol.volume import Volume

        old = base_tree(ctx.long)
        new = old.copy()
        new.remove_tree("docs")
        store, repo = _check_crashed(check, ctx, old, new)
        with check.step("rm -r again"):
            with contextlib.suppress(NotFound):  # NotFound: the first one landed
                Volume.from_id(repo.volume_id, store=store).remove_file("docs", recursive=True)
            check.equal(volume_tree(repo, ctx.dir), new, "the volume after rm -r again")
        _check_restore(check, repo, ctx, 1, old, "fsck after restore")


class Restore(Scenario):
    """Restore of an older commit over the head."""

    name = "restore"

    def setup(self, ctx: Ctx) -> Any:
        _, repo = _two_commits(ctx)
        ctx.save(volume=repo.volume_id)
        return repo

    def op(self, ctx: Ctx, prepared: Any) -> None:
        prepared.restore(1)

    def oracle(self, ctx: Ctx, check: Checker) -> None:
        first = base_tree(ctx.long)
        second = commit_changes(first, ctx.long)
        # Before the restore the head is the second commit; after it, the first's files.
        _, repo = _check_crashed(check, ctx, second, first)
        _check_restore(check, repo, ctx, 1, first, "fsck after restoring again")
        _check_restore(check, repo, ctx, 2, second, "fsck after restoring the second commit")


class Gc(Scenario):
    """Garbage collection of a volume with history and orphans of unpublished commits,
    all older than the grace period."""

    name = "gc"

    def setup(self, ctx: Ctx) -> Any:
        from kvol.content import ContentWriter

        store, repo = _two_commits(ctx)
        # Content of commits that never published (killed before their entry).
        with ContentWriter(store, repo.keys, CHUNK) as writer:
            for i in range(3 if not ctx.long else 12):
                writer.add_bytes(_bytes(1000 + i, 5 * CHUNK + i))  # chunked: blobs
                writer.add_bytes(f"orphan {i}\n".encode())
            writer.finish()
        if isinstance(store, FilesystemStore):
            # Everything two hours old: past any grace, so GC has real work to do.
            then = (time.time() - 7200) * 1e9
            for directory, _, names in os.walk(store.root / "volumes"):
                for name in names:
                    os.utime(os.path.join(directory, name), ns=(int(then), int(then)))
        ctx.save(volume=repo.volume_id)
        return repo

    def op(self, ctx: Ctx, prepared: Any) -> None:
        prepared.gc()

    def oracle(self, ctx: Ctx, check: Checker) -> None:
        first = base_tree(ctx.long)
        second = commit_changes(first, ctx.long)
        _, repo = _check_crashed(check, ctx, second, second)
        with check.step("read the history"):
            got = state_tree(repo, 1)
            check.expect(got.files == first.files, f"commit 1 after gc: {diff(got, first)}")
        with check.step("gc again"):
            repo.gc()
            check.fsck(repo, "after gc again")
        _check_restore(check, repo, ctx, 1, first, "fsck after restore")


def pruned_version(k: int, long: bool) -> Tree:
    """Commit ``k`` of the prune scenario: the base tree, the commit's changes, then a
    chunked file rewritten at each commit from the third on."""
    if k == 1:
        return base_tree(long)
    t = commit_changes(base_tree(long), long)
    if k >= 3:
        t.files["ver.bin"] = _bytes(500 + k, 2 * CHUNK + k)
    return t


def _age_volume(store: Store, volume_id: str, seconds: float) -> None:
    """Every object of the volume ``seconds`` old to the store's clock (filesystem store:
    elsewhere objects keep their age, and only the horizon moves)."""
    if isinstance(store, FilesystemStore):
        then = int((time.time() - seconds) * 1e9)
        for directory, _, names in os.walk(store.root / "volumes" / volume_id):
            for name in names:
                os.utime(os.path.join(directory, name), ns=(then, then))


class Prune(Scenario):
    """``kvol volume gc`` of a volume with a retention policy: prune (checkpoint at the
    cutoff, horizon, deletion of what is before a horizon older than the grace), then
    collection. A copy based on a commit the prune passes holds an uncommitted change."""

    name = "prune"
    #: Commits of the volume; an earlier prune kept the last 4 (horizon 3), this one
    #: keeps the last 2 (horizon 5).
    COMMITS = 6

    def setup(self, ctx: Ctx) -> Any:
        from kvol.retention import RetentionPolicy, prune_history, write_policy

        store = ctx.open_store()
        repo = new_volume(store)
        w = ctx.dir / "w"
        commit_tree(repo, w, pruned_version(1, ctx.long), 0).close(final_commit=False)
        for k in range(2, self.COMMITS + 1):
            commit_tree(repo, w, pruned_version(k, ctx.long), k).close(final_commit=False)
            if k == 3:
                stale = WorkingCopy.create(repo, ctx.dir / "s" / "root", ctx.dir / "s" / "meta")
                stale.close(final_commit=False)
        write_tree(
            ctx.dir / "s" / "root",
            merge(pruned_version(3, ctx.long), Tree({"s-local.txt": b"not committed\n"})),
            stamp=20,
        )
        prune_history(repo, RetentionPolicy(keep_last=4))
        _age_volume(store, repo.volume_id, 7200)
        write_policy(store, repo.volume_id, RetentionPolicy(keep_last=2))
        ctx.save(volume=repo.volume_id)
        return repo

    def op(self, ctx: Ctx, prepared: Any) -> None:
        from kvol.retention import prune_history

        prune_history(prepared)
        prepared.gc()

    def _kept_read_the_same(self, check: Checker, repo: Repo, ctx: Ctx, when: str) -> None:
        from kvol.errors import HistoryPruned

        with check.step(f"read the kept commits {when}"):
            horizon = repo.horizon()
            check.expect(horizon in (3, 5), f"retained history begins at {horizon}")
            for seq in range(3, self.COMMITS + 1):
                want = pruned_version(seq, ctx.long)
                try:
                    got = state_tree(repo, seq)
                except HistoryPruned:
                    check.expect(seq < horizon, f"commit {seq} pruned, horizon {horizon}")
                    continue
                check.expect(got.files == want.files, f"commit {seq}: {diff(got, want)}")

    def oracle(self, ctx: Ctx, check: Checker) -> None:
        from kvol.errors import StaleBase
        from kvol.retention import prune_history

        last = pruned_version(self.COMMITS, ctx.long)
        store, repo = _check_crashed(check, ctx, last, last)
        self._kept_read_the_same(check, repo, ctx, "after the crash")
        with check.step("gc again"):
            prune_history(repo)
            repo.gc()
            check.expect(repo.horizon() == 5, f"horizon {repo.horizon()} after gc again")
            check.fsck(repo, "after gc again")
        self._kept_read_the_same(check, repo, ctx, "after gc again")
        with check.step("the stale copy reloads, keeping its change, and commits"):
            wc = open_copy(ctx, store, "s")
            try:
                wc.commit("from a pruned base")
                check.expect(False, "a copy based on a pruned commit published")
            except StaleBase:
                pass
            wc.reload()
            want = merge(last, Tree({"s-local.txt": b"not committed\n"}))
            check.equal(read_tree(wc.root), want, "the stale copy after reloading")
            wc.commit("after reloading")
            wc.close(final_commit=False)
            check.equal(volume_tree(repo, ctx.dir), want, "the volume after its commit")
            check.fsck(repo, "after the stale copy's commit")
        _check_restore(check, repo, ctx, 5, pruned_version(5, ctx.long), "fsck after restore")


# -- the CSI node service -------------------------------------------------------------------------


def _node(ctx: Ctx) -> Any:
    from kvol.csi.node import NodeConfig, NodeService
    from kvol.csi.resolver import StaticResolver

    layout = ctx.params.get("layout", "auto")
    if layout == "image":
        # Lazy fetch by image snapshots; dropped with the pod, so that the end has no mount.
        config = NodeConfig(
            "node-1",
            ctx.dir / "state",
            layout="overlay",
            lazy_fetch=True,
            lazy_fetch_as="image",
            keep_warm_seconds=0,
        )
    else:
        config = NodeConfig("node-1", ctx.dir / "state", layout=layout)
    node = NodeService(config, StaticResolver(ctx.store_url, autocommit_seconds=0))
    # No background fetching: what a point reaches must not depend on how far it got.
    node.lowers.cache.prefetch = False
    slow = float(ctx.params.get("slow_fills", 0))
    if slow and node.lowers.images is not None:
        # For the harness's own tests: fetches that outlast the reads that asked for them.
        fill = node.lowers.images._fill
        node.lowers.images._fill = lambda batch: (time.sleep(slow), fill(batch))[1]
    return node


def _fills_done(node: Any) -> None:
    """Wait for the fetches the pod's reads started (the parts read ahead too): left
    running, they would reach the operation's start in one run and not in the next."""
    for filler in (node.lowers.images, node.lowers.cache.lazy):
        if filler is None:
            continue
        while True:  # until idle twice in a row, no read held in between (async readahead)
            held = getattr(filler, "events", None)
            if not filler.wait_idle(60):
                raise RuntimeError(f"{filler!r} still fetching after 60 s")
            time.sleep(0.1)
            if getattr(filler, "events", None) == held and filler.wait_idle(0):
                break


def _close_node(node: Any) -> None:
    """Stop a node's lazy fetching for good (its fanotify group's holder too)."""
    if node is not None:
        node.shutdown()
        node.lowers.close()


def _target(ctx: Ctx) -> Path:
    return ctx.dir / "kubelet" / "pods" / "uid-1" / "volumes" / "kubernetes.io~csi" / "d" / "mount"


def _publish_request(ctx: Ctx) -> Any:
    from kvol.csi.proto import csi_pb2

    mode = csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER
    return csi_pb2.NodePublishVolumeRequest(
        volume_id="csi-uid-1",
        target_path=str(_target(ctx)),
        volume_capability=csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(),
            access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode),
        ),
        volume_context={
            "volume": VOLUME,
            "csi.storage.k8s.io/pod.namespace": NAMESPACE,
            "csi.storage.k8s.io/pod.name": "pod-1",
            "csi.storage.k8s.io/ephemeral": "true",
            "autocommitIntervalSeconds": "0",
        },
    )


def _unpublish_request(ctx: Ctx) -> Any:
    from kvol.csi.proto import csi_pb2

    return csi_pb2.NodeUnpublishVolumeRequest(volume_id="csi-uid-1", target_path=str(_target(ctx)))


def _named_volume(ctx: Ctx, store: Store) -> Repo:
    from kvol.catalog import Catalog

    for_namespace: Callable[..., Catalog] | None = getattr(Catalog, "for_namespace", None)
    catalog = for_namespace(store, NAMESPACE) if for_namespace else Catalog(store, scope=NAMESPACE)
    meta = catalog.create(VOLUME)
    return Repo(store, meta.id, meta)


def _seed_named_volume(ctx: Ctx) -> Tree:
    """The namespace's named volume, its one commit the base tree (returned), and the
    directory the kubelet makes for the pod's target."""
    store = ctx.open_store()
    repo = _named_volume(ctx, store)
    old = base_tree(ctx.long)
    commit_tree(repo, ctx.dir / "seed", old, 0).close(final_commit=False)
    _target(ctx).parent.mkdir(parents=True)
    ctx.save(volume=repo.volume_id)
    return old


def _restart_node(check: Checker, ctx: Ctx) -> Any:
    """The plugin started again after the crash, readopting what it had published; None
    where that failed (the step records why)."""
    with check.step("restart the plugin"):
        node = _node(ctx)
        node.readopt()
        return node
    return None


def _check_end(check: Checker, repo: Repo, ctx: Ctx, old: Tree) -> None:
    with check.step("fsck at the end"):
        check.fsck(repo, "at the end")
    _check_restore(check, repo, ctx, 1, old, "fsck after restore")


def _pod_changes(t: Tree) -> Tree:
    """What the pod writes through its mount before it ends."""
    n = t.copy()
    n.files["pod/out.txt"] = b"written by the pod\n"
    n.files["pod/big.out"] = _bytes(7, 5 * CHUNK)
    n.files["mod.txt"] = b"modified by the pod\n"
    del n.files["del.txt"]
    n.remove_tree("docs")
    return n


def _no_mounts_left(check: Checker, ctx: Ctx) -> None:
    from kvol.mounting import mounts_under

    left = mounts_under(ctx.dir)
    check.expect(not left, f"mounts left after unpublishing: {left}")


class NodePublish(Scenario):
    name = "publish"
    mounts = True

    def setup(self, ctx: Ctx) -> Any:
        _seed_named_volume(ctx)
        return _node(ctx)

    def op(self, ctx: Ctx, prepared: Any) -> None:
        prepared.NodePublishVolume(_publish_request(ctx))

    def oracle(self, ctx: Ctx, check: Checker) -> None:
        old = base_tree(ctx.long)
        new = _pod_changes(old)
        _, repo = _check_crashed(check, ctx, old, old)
        node = _restart_node(check, ctx)
        try:
            if check.failed_step:
                return
            with check.step("publish again"):
                node.NodePublishVolume(_publish_request(ctx))
                check.equal(read_tree(_target(ctx)), old, "the pod's view after publishing again")
            if check.failed_step:
                return
            write_tree(_target(ctx), new, stamp=5)
            with check.step("unpublish"):
                node.NodeUnpublishVolume(_unpublish_request(ctx))
                check.equal(volume_tree(repo, ctx.dir), new, "the volume after the pod ended")
                _no_mounts_left(check, ctx)
            _check_end(check, repo, ctx, old)
        finally:
            _close_node(node)


class NodeUnpublish(Scenario):
    name = "unpublish"
    mounts = True

    def setup(self, ctx: Ctx) -> Any:
        old = _seed_named_volume(ctx)
        node = _node(ctx)
        node.NodePublishVolume(_publish_request(ctx))
        write_tree(_target(ctx), _pod_changes(old), stamp=5)
        _fills_done(node)
        return node

    def op(self, ctx: Ctx, prepared: Any) -> None:
        prepared.NodeUnpublishVolume(_unpublish_request(ctx))

    def oracle(self, ctx: Ctx, check: Checker) -> None:
        old = base_tree(ctx.long)
        new = _pod_changes(old)
        _, repo = _check_crashed(check, ctx, old, new)
        node = _restart_node(check, ctx)
        try:
            if check.failed_step:
                return
            with check.step("unpublish again (the kubelet retries)"):
                node.NodeUnpublishVolume(_unpublish_request(ctx))
            with check.step("read the volume after unpublishing"):
                check.equal(volume_tree(repo, ctx.dir), new, "the volume after the pod ended")
                _no_mounts_left(check, ctx)
                check.expect(not _target(ctx).exists(), "the target path is left behind")
            _check_end(check, repo, ctx, old)
        finally:
            _close_node(node)


class SplitPublish(Scenario):
    """A deliberately wrong writer, for testing the harness itself: it publishes one
    change as two log entries, so a crash between them leaves half of it."""

    name = "planted-split-publish"

    def setup(self, ctx: Ctx) -> Any:
        store = ctx.open_store()
        repo = new_volume(store)
        commit_tree(repo, ctx.dir / "w", base_tree(False), 0).close(final_commit=False)
        ctx.save(volume=repo.volume_id)
        return repo

    def op(self, ctx: Ctx, prepared: Any) -> None:
        from kvol.model import PutOp

        repo: Repo = prepared
        state = repo.state()
        first, second = sorted(state.files)[:2]
        seq = repo.publish([PutOp("copy-1", state.files[first])], state.seq)
        repo.publish([PutOp("copy-2", state.files[second])], seq)

    def oracle(self, ctx: Ctx, check: Checker) -> None:
        repo = Repo(ctx.open_store(), ctx.load()["volume"])
        old = base_tree(False)
        first, second = sorted(old.files)[:2]
        new = old.copy()
        new.files["copy-1"] = old.files[first]
        new.files["copy-2"] = old.files[second]
        with check.step("read the volume"):
            check.old_or_new(volume_tree(repo, ctx.dir), old, new)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Commit(),
        Reload(),
        SdkPut(),
        SdkRemove(),
        Restore(),
        Gc(),
        Prune(),
        NodePublish(),
        NodeUnpublish(),
        SplitPublish(),
    )
}
