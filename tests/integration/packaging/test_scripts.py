"""hack/ scripts: syntax, pinned versions, and a second run that finds everything cached."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.packaging.chart import run_helm
from tests.tools import REPO, tool

SCRIPTS = sorted((REPO / "hack").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_bash_syntax(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["install-helm.sh", "install-kind.sh", "kind-up.sh"])
def test_packaging_scripts_are_executable(name: str) -> None:
    script = REPO / "hack" / name
    assert os.access(script, os.X_OK), f"hack/{name} is not executable"
    assert script.read_text().startswith("#!/usr/bin/env bash\n")


@pytest.mark.parametrize(
    ("script", "name"), [("install-helm.sh", "helm"), ("install-kind.sh", "kind")]
)
def test_second_install_is_instant(script: str, name: str) -> None:
    tool(name, script)  # built once already, or the test fails naming the script
    started = time.monotonic()
    result = subprocess.run(
        [str(REPO / "hack" / script)], capture_output=True, text=True, timeout=120
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert f"{name} " in result.stderr and ": cached" in result.stderr, result.stderr
    assert elapsed < 5, f"hack/{script} took {elapsed:.1f}s with everything cached"


def test_helm_is_stamped_like_a_release(tmp_path: Path) -> None:
    result = run_helm("version", "--template", "{{ .Version }}")
    assert result.stdout.strip() == "v3.22.0"
    # The Kubernetes version `helm template` assumes is a current one, not the 1.20 fallback.
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.0.1\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe}\n"
        "data: {minor: {{ .Capabilities.KubeVersion.Minor | quote }}}\n"
    )
    rendered = yaml.safe_load(run_helm("template", str(chart)).stdout)
    assert int(rendered["data"]["minor"]) >= 30, rendered
