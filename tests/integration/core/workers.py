"""Code run in child processes by the integration tests (importable, for spawn)."""

from __future__ import annotations

import os
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from kvol.repo import Repo
from kvol.store import FilesystemStore
from kvol.workcopy import WorkingCopy


def _write(root: Path, rel: str, data: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)


def commit_rounds(
    store_root: str, volume_id: str, root: str, me: int, rounds: int, barrier: Barrier
) -> list[tuple[int, int | None]]:
    """One writer: its own files and one shared file, committed ``rounds`` times."""
    repo = Repo(FilesystemStore(store_root, durable=False), volume_id)
    wc = WorkingCopy.create(repo, root)
    barrier.wait()
    done: list[tuple[int, int | None]] = []
    for r in range(rounds):
        _write(wc.root, f"p{me}/r{r}", f"writer {me} round {r}")
        _write(wc.root, "shared.txt", f"writer {me} round {r}")
        done.append((r, wc.commit().seq))
    wc.close(final_commit=False)
    return done


def pair_member(
    store_root: str, volume_id: str, root: str, meta_dir: str, me: str, barrier: Barrier
) -> dict[str, Any]:
    """One of two working copies with their index outside the tree: commit, then reload."""
    repo = Repo(FilesystemStore(store_root, durable=False), volume_id)
    wc = WorkingCopy.create(repo, root, meta_dir=meta_dir)
    barrier.wait()
    _write(wc.root, f"{me}.txt", f"from {me}")
    _write(wc.root, "both.txt", f"both, from {me}")
    seq = wc.commit().seq
    barrier.wait()  # both have committed
    reloaded = wc.reload()
    files = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            full = Path(dirpath) / name
            files[str(full.relative_to(root))] = full.read_text()
    wc.close(final_commit=False)
    return {"seq": seq, "files": files, "to_seq": reloaded.to_seq, "kept": reloaded.kept_local}


def run(fn: Any, args: tuple[Any, ...], key: Any, results: Any) -> None:
    """Process entry point: call ``fn`` and send back (key, result or the error's text)."""
    try:
        results.put((key, True, fn(*args)))
    except BaseException:
        import traceback

        results.put((key, False, traceback.format_exc()))


def run_all(
    calls: dict[Any, tuple[Any, tuple[Any, ...]]], ctx: Any, timeout: float
) -> dict[Any, Any]:
    """Run each call in its own spawned process at once; results by key; fail on any error."""
    results = ctx.Queue()
    procs = [
        ctx.Process(target=run, args=(fn, args, key, results)) for key, (fn, args) in calls.items()
    ]
    for p in procs:
        p.start()
    found: dict[Any, Any] = {}
    errors: list[str] = []
    try:
        for _ in procs:
            key, ok, value = results.get(timeout=timeout)
            if ok:
                found[key] = value
            else:
                errors.append(f"{key}: {value}")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise AssertionError("a child process failed:\n" + "\n".join(errors))
    return found


def commit_shared_copy(store_root: str, root: str, barrier: Barrier) -> int | None:
    """One of several processes committing the same working copy at once."""
    wc = WorkingCopy.open(root, store=FilesystemStore(store_root, durable=False))
    barrier.wait()
    return wc.commit().seq


def create_volume(store_root: str, name: str, barrier: Barrier) -> str:
    from kvol.catalog import Catalog

    catalog = Catalog(FilesystemStore(store_root, durable=False))
    barrier.wait()
    return catalog.create(name, allow_existing=True).id
