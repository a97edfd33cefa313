"""The command line's fixed cost: ``kvol --help``, ``kvol volume ls`` of a small volume and
a no-op ``kvol volume reload`` of a working copy of it, each run as its own process as a
user runs it, beside git doing as little."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import baselines
from bench.harness import Context, Measurement, Result, Scenario
from bench.tree import write_small_files

#: Files in the small volume that ``volume ls`` lists.
SMALL_VOLUME_FILES = 20


def kvol_command() -> list[str]:
    """The ``kvol`` entry point installed beside this interpreter, else the module."""
    script = Path(sys.executable).parent / "kvol"
    if os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "kvol.cli.main"]


def compiled_env(workdir: Path) -> dict[str, str]:
    """This environment, with kvol started from compiled bytecode kept under ``workdir``,
    as an installed kvol is, even where this environment says not to write it (the first,
    untimed, run of each command writes it): else every run would compile every module
    it imports."""
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(workdir / "bytecode")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


#: The environment commands run in (set by ``startup``).
_ENV: dict[str, str] = {}


def _run(cmd: Sequence[str], *, cwd: Path | None = None) -> float:
    env = {**(_ENV or os.environ), **baselines.GIT_ENV}
    started = time.perf_counter()
    proc = subprocess.run(
        list(cmd), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)!r} failed ({proc.returncode}): "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )
    return elapsed


def _median(cmd: Sequence[str], runs: int, *, cwd: Path | None = None) -> float:
    _run(cmd, cwd=cwd)  # warm the page cache: every tool starts warm
    times = sorted(_run(cmd, cwd=cwd) for _ in range(runs))
    return times[len(times) // 2]


def startup(ctx: Context) -> list[Result]:
    runs = 5 if ctx.quick else 21
    _ENV.update(compiled_env(ctx.workdir))
    kvol = kvol_command()
    git = baselines.require("git")
    store = f"file://{ctx.workdir / 'store'}"
    source, repo = ctx.workdir / "files", ctx.workdir / "git"
    write_small_files(source, SMALL_VOLUME_FILES, 256)
    _run([*kvol, "--store", store, "volume", "create", "small"])
    _run([*kvol, "--store", store, "volume", "put", "small", str(source), "/"])
    copy = ctx.workdir / "copy"
    _run([*kvol, "--store", store, "volume", "mount", "small", str(copy)])
    baselines.git_init(repo)
    write_small_files(repo, SMALL_VOLUME_FILES, 256)
    baselines.git_commit_all(repo)

    interpreter = _median([sys.executable, "-c", "pass"], runs)
    helped = _median([*kvol, "--help"], runs)
    version = _median([*kvol, "--version"], runs)
    listed = _median([*kvol, "--store", store, "volume", "ls", "small", "/"], runs)
    reloaded = _median([*kvol, "--store", store, "volume", "reload", str(copy)], runs)
    git_version = _median([git, "--version"], runs)
    git_status = _median([git, "status"], runs, cwd=repo)
    floor = Measurement("python -c pass", interpreter)
    return [
        Result(
            "cli.help",
            helped,
            Measurement("git --version", git_version),
            params={"runs": runs, "command": "kvol --help"},
            other_baselines=[floor],
            details={"kvol_version_seconds": version},
        ),
        Result(
            "cli.volume_ls",
            listed,
            Measurement("git status", git_status),
            params={"runs": runs, "command": "kvol volume ls", "files": SMALL_VOLUME_FILES},
            other_baselines=[floor],
        ),
        Result(
            "cli.volume_reload",
            reloaded,
            Measurement("git status", git_status),
            params={
                "runs": runs,
                "command": "kvol volume reload (nothing new)",
                "files": SMALL_VOLUME_FILES,
            },
            other_baselines=[floor],
            details={"load_average": _load()},
        ),
    ]


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


SCENARIOS = [
    Scenario(
        "cli.startup",
        startup,
        per_store=False,
        description="kvol --help, volume ls and a no-op reload of a small volume vs git "
        "--version and git status",
    )
]
