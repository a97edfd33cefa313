"""Rendering charts/kvol with the real helm binary (hack/install-helm.sh)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.tools import REPO, tool

CHART = REPO / "charts" / "kvol"
NAMESPACE = "kvol-system"

Obj = dict[str, Any]


def helm() -> str:
    return tool("helm", "install-helm.sh")


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, check=check, timeout=120)


def template_args(
    sets: Iterable[str] = (), release: str = "kvol", values_file: Path | None = None
) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", NAMESPACE]
    if values_file is not None:
        args += ["--values", str(values_file)]
    for value in sets:
        args += ["--set", value]
    return args


def render(
    *sets: str,
    release: str = "kvol",
    values_file: Path | None = None,
    include_crds: bool = False,
) -> list[Obj]:
    """Every object ``helm template`` renders with these ``--set`` values."""
    args = template_args(sets, release, values_file)
    if include_crds:
        args.append("--include-crds")
    result = run_helm(*args, check=False)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def render_error(*sets: str) -> str:
    """The message of a ``helm template`` that must fail with these values."""
    result = run_helm(*template_args(sets), check=False)
    assert result.returncode != 0, "helm template succeeded but should have refused the values"
    return result.stderr


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Obj], kind: str, component: str | None = None) -> Obj:
    found = [
        o
        for o in by_kind(objects, kind)
        if component is None
        or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {kind} {component or ''}, found {len(found)}"
    return found[0]


def pod_specs(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, pod spec) for every Deployment and DaemonSet."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "DaemonSet"):
            yield obj, obj["spec"]["template"]["spec"]


def container(pod_spec: Obj, name: str) -> Obj:
    for c in pod_spec["containers"]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name!r} in {[c['name'] for c in pod_spec['containers']]}")
