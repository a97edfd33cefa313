"""Removing and copying files inside a volume for the SDK (``Volume.remove_file``,
``Volume.copy_files``): each call is one commit, made of operations that name every file
and directory it saw, so that nothing another writer adds meanwhile is taken with them."""

from __future__ import annotations

from collections.abc import Sequence

from kvol import paths, upload
from kvol.errors import InvalidArgument, NotFound
from kvol.model import MkdirOp, Op, PutOp, RmdirOp, State, UnlinkOp
from kvol.repo import Repo
from kvol.volume_entries import show


def remove_path(repo: Repo, path: str, recursive: bool) -> None:
    """As :meth:`kvol.volume.Volume.remove_file`, in the volume of ``repo``."""
    rel = paths.normalize(path)
    state = repo.state()
    if rel not in state.files:
        if not state.is_dir(rel):
            raise NotFound(f"{show(rel)} does not exist in the volume")
        if not recursive:
            raise InvalidArgument(
                f"{show(rel)} is a directory: remove it with recursive=True (CLI: rm -r)"
            )
    upload.publish(repo, state, tree_removal(state, rel), f"remove {show(rel)}")


def copy_paths(repo: Repo, src_paths: Sequence[str], dst_path: str, recursive: bool) -> None:
    """As :meth:`kvol.volume.Volume.copy_files` (its arguments checked), in the volume of
    ``repo``."""
    state = repo.state()
    dst = paths.normalize(dst_path, allow_root=True)
    into = (
        dst == ""
        or dst_path.endswith("/")
        or len(src_paths) > 1
        or (dst not in state.files and state.is_dir(dst))
    )
    if into and dst in state.files:
        raise InvalidArgument(f"{show(dst)} is a file, not a directory")
    ops: list[Op] = []
    for src_path in src_paths:
        src = paths.normalize(src_path)
        target = f"{dst}/{src.rsplit('/', 1)[-1]}".lstrip("/") if into else dst
        if not target:
            raise InvalidArgument("cannot copy over the volume root")
        if src in state.files:
            _refuse_file_over_dir(state, target)
            ops.append(PutOp(target, state.files[src]))
            continue
        if not state.is_dir(src):
            raise NotFound(f"{show(src)} does not exist in the volume")
        if not recursive:
            raise InvalidArgument(
                f"{show(src)} is a directory: copy it with recursive=True (CLI: cp -r)"
            )
        if paths.is_under(target, src):
            raise InvalidArgument(f"cannot copy {show(src)} into itself")
        ops.append(MkdirOp(target))
        for d in sorted(d for d in state.dirs if paths.is_under(d, src) and d != src):
            ops.append(MkdirOp(target + d[len(src) :]))
        for p, record in sorted(state.iter_under(src)):
            _refuse_file_over_dir(state, target + p[len(src) :])
            ops.append(PutOp(target + p[len(src) :], record))
    upload.publish(repo, state, ops, f"copy to {show(dst)}")


def tree_removal(state: State, rel: str) -> list[Op]:
    """The operations that remove ``rel`` (a file, or a directory tree) as ``state`` has
    it: every file by name, then every explicit directory, deepest first. Never a
    recursive delete, which would also take files another writer added meanwhile."""
    if rel in state.files:
        return [UnlinkOp(rel)]
    ops: list[Op] = [UnlinkOp(p) for p, _ in sorted(state.iter_under(rel))]
    dirs = [d for d in state.dirs if d == rel or paths.is_under(d, rel)]
    ops += [RmdirOp(d) for d in sorted(dirs, key=paths.deepest_first)]
    return ops


def _refuse_file_over_dir(state: State, target: str) -> None:
    # A file published over a directory takes the whole tree under it, whatever it holds
    # by then: like cp, refuse instead.
    if target not in state.files and state.is_dir(target):
        raise InvalidArgument(
            f"{show(target)} is a directory in the volume: a file cannot replace it "
            "(remove it first)"
        )
