"""Run one working-copy operation in this process and SIGKILL it at a chosen point.

The points are every store call and every filesystem mutation of the copy (file written,
path removed, directory made or removed, index saved), counted in the order they happen.
Every task kvol hands to a thread pool runs at once in the submitting thread here, so the
order is the same on every run: a kill at point ``k`` leaves the same state each time,
which hypothesis needs to replay a case (with worker threads, how far the other threads
got when one reached point ``k`` varied from run to run). At point ``k`` the
process kills itself, just before that call or just after it returns: what is on disk and
in the store then is exactly what a crash there leaves. Every performed point is appended
to a record file first, so the test knows, for instance, whether the log entry landed.

    python tests/model/killer.py '{"store": {...}, "root": ..., "op": "commit", ...}'

Exit status 0: the operation finished before point ``k`` (its result is on stdout; a
commit refused because its base was pruned, or because content it reuses was collected
meanwhile, says so there).

With ``"pause": true`` the process stops at point ``k`` instead: it prints ``paused``,
waits for a line on stdin, then goes on (another writer, a prune or a gc runs meanwhile).
The ``prune`` operation is ``kvol volume gc`` of the volume ``volume`` with ``grace``:
prune by its retention policy, then collect.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

# The code of the checkout this file is in, not the one the environment installed: an
# exploration run from another worktree tests its own code, while the first is edited.
# (Added after start-up, so the checkout's operator/ cannot shadow the standard library's.)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kvol import fsops, index
from kvol.errors import Conflict, StaleBase
from kvol.overlay import ContentCache, Lowers, OverlayWorkingCopy
from kvol.repo import Repo
from kvol.retention import prune_history
from kvol.store import FilesystemStore, Store, open_store
from kvol.store.base import Store as BaseStore
from kvol.workcopy import WorkingCopy

T = TypeVar("T")

#: The filesystem mutations of kvol.fsops (those this version has).
MUTATIONS = (
    "write_file",
    "remove",
    "remove_file",
    "make_dirs",
    "remove_empty_dir",
    "remove_tree_at",
    "write_atomically",
)


class Points:
    def __init__(self, k: int, when: str, record: Path, pause: bool = False) -> None:
        self.k = k
        self.when = when
        self.pause = pause
        self.n = 0
        self.record = record.open("a", buffering=1)

    def _note(self, line: str) -> None:
        self.record.write(line + "\n")
        self.record.flush()

    def _stop(self, n: int, kind: str, detail: str, when: str) -> None:
        if self.pause:
            self._note(json.dumps({"paused": n, "kind": kind, "detail": detail, "when": when}))
            print("paused", flush=True)
            sys.stdin.readline()
            return
        self._note(json.dumps({"kill": n, "kind": kind, "detail": detail, "when": when}))
        os.kill(os.getpid(), signal.SIGKILL)

    def hit(self, kind: str, detail: str, call: Callable[[], T]) -> T:
        self.n += 1
        n = self.n
        if n == self.k and self.when == "before":
            self._stop(n, kind, detail, "before")
        try:
            result = call()
        except BaseException as exc:
            self._done(n, kind, detail, type(exc).__name__)
            raise
        self._done(n, kind, detail, _show(result))
        return result

    def _done(self, n: int, kind: str, detail: str, result: Any) -> None:
        self._note(json.dumps({"done": n, "kind": kind, "detail": detail, "result": result}))
        if n == self.k and self.when == "after":
            self._stop(n, kind, detail, "after")


class InlinePool(Executor):
    """A pool whose tasks run in the submitting thread, in submission order (one valid
    interleaving of what worker threads would do)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def inline_pools() -> None:
    for name, module in list(sys.modules.items()):
        if name.startswith("kvol") and getattr(module, "ThreadPoolExecutor", None) is (
            ThreadPoolExecutor
        ):
            module.ThreadPoolExecutor = InlinePool  # type: ignore[attr-defined]


def _show(value: Any) -> Any:
    return value if isinstance(value, bool | int | str | type(None)) else type(value).__name__


def install(points: Points) -> None:
    original_call = BaseStore._call

    def store_call(self: Store, operation: str, fn: Callable[..., T], *args: object) -> T:
        key = args[0] if args and isinstance(args[0], str) else ""
        return points.hit(
            f"store.{operation}", key, lambda: original_call(self, operation, fn, *args)
        )

    BaseStore._call = store_call  # type: ignore[method-assign]

    def wrap(module: Any, name: str) -> None:
        original = getattr(module, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            detail = next((a for a in args if isinstance(a, str | Path)), "")
            return points.hit(f"fs.{name}", str(detail), lambda: original(*args, **kwargs))

        setattr(module, name, wrapped)

    for name in MUTATIONS:
        if hasattr(fsops, name):
            wrap(fsops, name)
    if hasattr(index, "write_atomically"):
        wrap(index, "write_atomically")


def open_spec(spec: dict[str, Any]) -> Store:
    if spec["kind"] == "fs":
        return FilesystemStore(spec["root"], durable=spec.get("durable", False))
    return open_store(spec["url"])


def open_copy(args: dict[str, Any], store: Store) -> WorkingCopy:
    """The copy, as a restarted process opens it: a plain one from its directory, an
    overlay one re-adopted (still mounted) from its layers over its snapshot."""
    overlay = args.get("overlay")
    if overlay is None:
        return WorkingCopy.open(args["root"], store=store, concurrency=1)
    lowers = Lowers(overlay["lowers"], ContentCache(overlay["cache"]))
    family, seq = overlay["lower"]
    lower = lowers.get(family, seq)
    if lower is None:
        raise SystemExit(f"snapshot {family}/{seq} is missing")
    repo = Repo(store, overlay["volume"])
    return OverlayWorkingCopy.mount(
        repo, lowers, lower, overlay["layers"], concurrency=1, group=overlay.get("group")
    )


def main() -> int:
    args = json.loads(sys.argv[1])
    store = open_spec(args["store"])
    points = Points(
        int(args["k"]), str(args["when"]), Path(args["record"]), args.get("pause", False)
    )
    install(points)
    inline_pools()
    if args["op"] == "prune":
        repo = Repo(store, args["volume"])
        grace = float(args["grace"])
        report = prune_history(repo, grace_seconds=grace)
        collected = repo.gc(grace)
        print(json.dumps({"horizon": report.horizon, "deleted": collected.objects_deleted}))
        return 0
    copy = open_copy(args, store)
    if args["op"] == "commit":
        try:
            result: Any = copy.commit()
        except StaleBase:
            print(json.dumps({"stale": True}))
            return 0
        except Conflict:
            # Content the commit reuses was collected before it could publish it.
            print(json.dumps({"conflict": True}))
            return 0
        print(json.dumps({"seq": result.seq, "deferred": list(result.deferred)}))
    elif args["op"] == "reload":
        done = copy.reload()
        print(json.dumps({"to": done.to_seq, "kept": list(done.kept_local)}))
    else:
        raise SystemExit(f"unknown operation {args['op']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
