"""The Dockerfile: its base, its build context, and the wheel its build stage makes.

No image can be built here (no registry for the base image), so the build stage's Python
step runs for real on a context laid out the way Docker would send it: only what the
Dockerfile copies, less what .dockerignore leaves out.
"""

from __future__ import annotations

import configparser
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.tools import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    parts = relative.split("/")
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        # A pattern matches the path or any of its parent directories.
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatch(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(parts[i - 1], bare)
            ):
                return True
    return False


def copy_sources() -> list[str]:
    sources = []
    for word, args in instructions():
        if word == "COPY" and "--from=" not in args:
            sources += args.split()[:-1]
    return sources


def test_base_image_is_python_311_slim() -> None:
    steps = instructions()
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    stages = [a for w, a in steps if w == "FROM"]
    assert len(stages) == 2 and all(s.startswith("${PYTHON_IMAGE}") for s in stages)
    # The final stage runs as a non-root user and puts the virtualenv's scripts on PATH.
    final = steps[[i for i, (w, _) in enumerate(steps) if w == "FROM"][-1] :]
    assert ("USER", "65532:65532") in final
    assert any(w == "ENV" and "PATH=/opt/kvol/bin:$PATH" in a for w, a in final)


def test_copied_paths_exist_and_reach_the_context() -> None:
    patterns = ignore_patterns()
    for source in copy_sources():
        path = REPO / source.rstrip("/")
        assert path.exists(), f"the Dockerfile copies {source}, which does not exist"
        assert not ignored(source.rstrip("/"), patterns), f".dockerignore drops {source}"
    # Whatever pyproject.toml names for the build must be copied too.
    assert {"pyproject.toml", "setup.py", "README.md"} <= set(copy_sources())


def _context(tmp_path: Path) -> Path:
    """The build context Docker would send, restricted to what the Dockerfile copies."""
    patterns = ignore_patterns()
    context = tmp_path / "context"
    for source in copy_sources():
        src = REPO / source.rstrip("/")
        files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if not ignored(relative, patterns):
                (context / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, context / relative)
    return context


def test_ignored_files_include_generated_protos() -> None:
    patterns = ignore_patterns()
    assert ignored("csi/proto/csi_pb2.py", patterns)
    assert ignored("kvol/__pycache__/x.pyc", patterns)
    assert ignored(".venv/bin/python", patterns)
    assert not ignored("csi/proto/csi.proto", patterns)


@pytest.mark.timeout(600)
def test_build_stage_makes_a_wheel_with_both_components(tmp_path: Path) -> None:
    context = _context(tmp_path)
    wheels = tmp_path / "wheels"
    # The Dockerfile's build step, with this interpreter standing in for the base image's.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = wheels.glob("kvol-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points_name = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(entry_points_name).decode())
    # Both components install inside the kvol package; nothing shadows the stdlib operator.
    assert "kvol/operator/main.py" in names
    assert "kvol/csi/proto/csi_pb2.py" in names and "kvol/csi/proto/csi_pb2_grpc.py" in names
    assert not any(n.startswith(("operator/", "csi/")) for n in names)
    scripts = dict(entry_points["console_scripts"])
    # The two components start through a guard that names a missing extra.
    assert scripts["kvol-operator"] == "kvol.entrypoints:operator"
    assert scripts["kvol-csi"] == "kvol.entrypoints:csi"
    assert scripts["kvol"] == "kvol.cli.main:main"
    # The modules the console scripts name are in the wheel.
    for target in scripts.values():
        module = target.split(":")[0].replace(".", "/") + ".py"
        assert module in names, f"{target} is not in the wheel"
