"""The kind workflow: the real kind binary, its check of hack/kind-config.yaml, kind-up.sh.

kind cannot create a cluster here (node images come from a registry). It reads and validates
its config only after it has talked to a node provider, so these tests put a small stand-in
``docker`` first on PATH: it answers the provider probes (version, info, no existing nodes,
node image present) and refuses everything else, and it records what kind asked of it. kind
itself, its config decoding, its validation and its planning of the node containers are real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.tools import REPO, tool

KIND_CONFIG = REPO / "hack" / "kind-config.yaml"
KIND_UP = REPO / "hack" / "kind-up.sh"
KIND_VERSION = "v0.33.0"

STAND_IN = """#!/bin/sh
# A container runtime that is not there: answers kind's provider probes, refuses the rest.
echo "$*" >> {log}
case "$1" in
  -v) echo "Docker version 27.0.0, build stand-in" ;;
  info) echo '{{"CgroupDriver":"cgroupfs","CgroupVersion":"2","MemoryLimit":true,"PidsLimit":true,"CPUShares":true,"SecurityOptions":[]}}' ;;
  ps) ;;
  inspect) exit 0 ;;
  network) [ "$2" = ls ] && echo 0123456789ab ;;
  *) echo "stand-in docker: '$1' is not available" >&2; exit 1 ;;
esac
"""


def kind() -> str:
    return tool("kind", "install-kind.sh")


def run(
    argv: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


@pytest.fixture
def stand_in(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose PATH has the stand-in docker first, and its command log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    docker = bin_dir / "docker"
    docker.write_text(STAND_IN.format(log=log))
    docker.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "KUBECONFIG": str(tmp_path / "kubeconfig"),
    }
    return env, log


def test_kind_builds_and_runs() -> None:
    result = run([kind(), "version"], dict(os.environ))
    assert result.returncode == 0 and KIND_VERSION in result.stdout, result.stderr
    result = run([kind(), "create", "cluster", "--help"], dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout and "--image" in result.stdout


def test_kind_accepts_the_config_and_plans_the_shared_store(
    stand_in: tuple[dict[str, str], Path],
) -> None:
    env, log = stand_in
    result = run(
        [kind(), "create", "cluster", "--name", "kvol-check", "--config", str(KIND_CONFIG)], env
    )
    # It got past decoding and validation to creating the node containers, which the
    # stand-in refuses.
    assert result.returncode != 0
    assert "stand-in docker: 'run' is not available" in result.stderr, result.stderr
    runs = [line for line in log.read_text().splitlines() if line.startswith("run ")]
    names = {line.split("--name ", 1)[1].split()[0] for line in runs}
    assert names <= {"kvol-check-control-plane", "kvol-check-worker", "kvol-check-worker2"}
    assert names, "kind planned no node container"
    for line in runs:
        # Every node mounts the shared store where the chart's filesystem backend expects it.
        assert "--volume=/tmp/kvol-kind-store:/var/lib/kvol-store" in line, line


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("nodes:\n- role: master\n", '"master" is not a valid node role'),
        ("nodes:\n- role: control-plane\n  extraMount: []\n", "field extraMount not found"),
    ],
)
def test_kind_rejects_a_broken_config(
    stand_in: tuple[dict[str, str], Path], tmp_path: Path, config: str, message: str
) -> None:
    """The check the test above relies on is real: kind refuses bad configs before any node."""
    env, log = stand_in
    path = tmp_path / "kind.yaml"
    path.write_text("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n" + config)
    result = run([kind(), "create", "cluster", "--name", "kvol-check", "--config", str(path)], env)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert not any(line.startswith(("run ", "network ")) for line in log.read_text().splitlines())


def _bare_path(tmp_path: Path, *commands: str) -> str:
    """A PATH holding only ``commands`` (linked from the system), nothing else."""
    bin_dir = tmp_path / "bare-bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("dirname", "mkdir", "mktemp", "rm", "sed", "grep", "cat", *commands):
        found = shutil.which(name)
        assert found, f"{name} is not installed"
        (bin_dir / name).symlink_to(found)
    return str(bin_dir)


def test_kind_up_names_a_missing_docker(tmp_path: Path) -> None:
    env = {"PATH": _bare_path(tmp_path), "HOME": str(tmp_path), "KVOL_CACHE": str(tmp_path)}
    result = run(["/bin/bash", str(KIND_UP)], env)
    assert result.returncode == 1
    assert "error: docker is missing: install Docker" in result.stderr, result.stderr


def test_kind_up_names_a_missing_kind(
    stand_in: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, _ = stand_in
    bare = _bare_path(tmp_path)
    env = {**env, "PATH": f"{Path(env['PATH'].split(':')[0])}:{bare}", "KVOL_CACHE": str(tmp_path)}
    result = run(["/bin/bash", str(KIND_UP)], env)
    assert result.returncode == 1
    assert "error: kind is missing: run hack/install-kind.sh" in result.stderr, result.stderr


def test_kind_up_names_a_docker_daemon_that_does_not_answer(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n"
    )
    (bin_dir / "docker").chmod(0o755)
    (bin_dir / "kind").symlink_to(kind())
    env = {"PATH": f"{bin_dir}:{_bare_path(tmp_path)}", "HOME": str(tmp_path)}
    result = run(["/bin/bash", str(KIND_UP)], env)
    assert result.returncode == 1
    assert "daemon does not answer" in result.stderr, result.stderr
