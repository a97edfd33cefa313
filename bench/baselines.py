"""Baselines: the ordinary tools kvol is compared with (cp, sync, git), timed as a user
would run them, each as its own process."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

#: git as a user would have it, minus anything from this machine's configuration, and
#: without the background repack after large commits, which would steal CPU from
#: whatever is timed next (this makes git's baseline faster, never slower).
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "kvol-bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "kvol-bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
}
GIT_OPTIONS = ("-c", "gc.auto=0", "-c", "init.defaultBranch=main")


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"the {tool!r} baseline needs {tool} installed (Debian package {tool})")
    return path


def run(
    cmd: Sequence[str],
    *,
    cwd: Path | None = None,
    shell: bool = False,
    env: Mapping[str, str] | None = None,
) -> float:
    """Run a command to completion (in ``env``, else this process's environment); its
    wall-clock seconds. Fails loudly on error."""
    env = {**(os.environ if env is None else env), **GIT_ENV}
    started = time.perf_counter()
    proc = subprocess.run(
        " ".join(cmd) if shell else list(cmd),
        cwd=cwd,
        env=env,
        shell=shell,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"baseline command {' '.join(cmd)!r} failed ({proc.returncode}): "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )
    return elapsed


def git(repo: Path, *args: str) -> float:
    return run([require("git"), *GIT_OPTIONS, "-C", str(repo), *args])


def git_init(repo: Path) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q")


def git_clone(origin: Path, clone: Path) -> float:
    return run([require("git"), *GIT_OPTIONS, "clone", "-q", str(origin), str(clone)])


def git_commit_all(repo: Path, message: str = "bench") -> float:
    """``git add -A && git commit``, as one timed shell command."""
    g = shlex.join([require("git"), *GIT_OPTIONS, "-C", str(repo)])
    return run([f"{g} add -A && {g} commit -q -m {shlex.quote(message)}"], shell=True)


def cp_tree(src: Path, dst: Path, *, sync: bool = False) -> float:
    """``cp -r src dst`` (``&& sync`` with ``sync``): the copy a plain tool makes."""
    cmd = shlex.join([require("cp"), "-r", str(src), str(dst)]) + (" && sync" if sync else "")
    return run([cmd], shell=True)


def cp_files(src_root: Path, rels: Sequence[str], dst: Path) -> float:
    """Copy just ``rels`` (relative to ``src_root``) into ``dst``, keeping their paths."""
    dst.mkdir(parents=True, exist_ok=True)
    return run([require("cp"), "--parents", "-t", str(dst), *rels], cwd=src_root)


def drop_dirty_pages() -> None:
    """Write back everything dirty, so the next timing pays only for its own writes."""
    os.sync()
