"""The chart's values: the schema that refuses bad ones, the README generated from them, the
operator's user for each backend, and a chart that is whole without the rest of the tree."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import VALUES as E2E_VALUES
from tests.integration.packaging.chart import CHART, one, render, render_error, run_helm
from tests.tools import REPO

SCHEMA_ERROR = "values don't meet the specifications of the schema"


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def _operator_pod_security(*sets: str) -> dict[str, Any]:
    spec = one(render(*sets), "Deployment", "controller")["spec"]["template"]["spec"]
    context: dict[str, Any] = spec["securityContext"]
    return context


# -- the operator's user -----------------------------------------------------------------


@pytest.mark.parametrize(
    "sets",
    [(), E2E_VALUES, ("controller.podSecurityContext.runAsUser=1000",)],
    ids=["defaults", "e2e-values", "user-set-uid"],
)
def test_operator_writes_a_filesystem_store_as_root(sets: tuple[str, ...]) -> None:
    """The store is a root-owned host directory the plugin writes as root: 0 and false must
    survive into the pod, whatever the values hold (a merge would drop them)."""
    context = _operator_pod_security(*sets)
    assert context["runAsUser"] == 0
    assert context["runAsGroup"] == 0
    assert context["runAsNonRoot"] is False
    assert "fsGroup" not in context
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_operator_stays_unprivileged_with_an_s3_store() -> None:
    context = _operator_pod_security("backend.type=s3", "backend.s3.bucket=data")
    assert context == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# -- the schema --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "where", "words"),
    [
        (("node.layout=bogus",), "/node/layout", "value must be one of 'auto', 'overlay', 'plain'"),
        (("node.bogus=1",), "/node", "additional properties 'bogus' not allowed"),
        (("nodes.layout=plain",), "", "additional properties 'nodes' not allowed"),
        (("controller.workers=many",), "/controller/workers", "want integer"),
        (("controller.verbose=yes",), "/controller/verbose", "want boolean"),
        (("node.metricsPort=70000",), "/node/metricsPort", "want 65,535"),
        (("backend.type=nfs",), "/backend/type", "value must be one of 'filesystem', 's3'"),
        (("node.registration=both",), "/node/registration", "'builtin', 'sidecar'"),
        (("node.kubeletDir=var/lib/kubelet",), "/node/kubeletDir", "does not match pattern"),
        (("image.kvol.pullPolicy=Sometimes",), "/image/kvol/pullPolicy", "IfNotPresent"),
        (("commonLabels.team.name=x",), "/commonLabels/team", "want string"),
        (("metrics.serviceMonitor.interval=often",), "/metrics/serviceMonitor/interval", ""),
    ],
)
def test_schema_refuses_bad_values_naming_the_key(
    sets: tuple[str, ...], where: str, words: str
) -> None:
    message = render_error(*sets)
    assert SCHEMA_ERROR in message
    assert f"at '{where}'" in message, message
    assert words in message, message


@pytest.mark.parametrize(
    "sets",
    [
        (),
        E2E_VALUES,
        ("node.logLevel=debug", "image.kvol.tag=1", "controller.statusIntervalSeconds=0.5"),
        (
            "backend.type=s3",
            "backend.s3.bucket=kvol-data",
            "backend.s3.endpoint=http://127.0.0.1:9000",
            "metrics.service.enabled=true",
            "metrics.serviceMonitor.enabled=true",
            "metrics.prometheusRule.enabled=true",
            "dashboard.enabled=true",
            "node.registration=sidecar",
            "global.imageRegistry=example",
        ),
    ],
    ids=["defaults", "e2e", "loose-but-valid", "everything-on"],
)
def test_schema_accepts_good_values(sets: tuple[str, ...]) -> None:
    assert render(*sets)


def _schema_node(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref:
        return _schema_node(schema, schema["definitions"][ref.rsplit("/", 1)[1]])
    return node


def _walk(schema: dict[str, Any], node: dict[str, Any], values: Any, path: str) -> list[str]:
    """Keys of ``values`` the schema does not describe, and chart keys values.yaml lacks
    (shared definitions, such as a container's resources, may describe more)."""
    shared = "$ref" in node
    node = _schema_node(schema, node)
    if not isinstance(values, dict) or "properties" not in node:
        return []
    problems = []
    properties = node["properties"]
    for key, value in values.items():
        if key not in properties:
            problems.append(f"{path}{key} is in values.yaml but not in the schema")
        else:
            problems += _walk(schema, properties[key], value, f"{path}{key}.")
    for key in properties:
        # A map empty by default (storageClass.parameters) lists what it may hold.
        optional = shared or not values or (path == "" and key == "global")
        if not optional and key not in values:
            problems.append(f"{path}{key} is in the schema but not in values.yaml")
    return problems


def test_schema_and_values_have_the_same_keys() -> None:
    schema = _schema()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert _walk(schema, schema, values, "") == []


# -- a chart that stands alone -----------------------------------------------------------


def test_chart_holds_no_links() -> None:
    links = [str(p.relative_to(CHART)) for p in CHART.rglob("*") if p.is_symlink()]
    assert links == [], "the chart must hold real files (helm warns on links; GitOps refuses)"


def test_chart_crds_are_copies_of_the_generated_crds() -> None:
    generated = {
        p.name: p.read_bytes()
        for p in (REPO / "manifests" / "crds").glob("*.yaml")
        if p.name != "kustomization.yaml"
    }
    in_chart = {p.name: p.read_bytes() for p in (CHART / "crds").iterdir()}
    assert generated and in_chart == generated, "run hack/gen_manifests.py"


def test_packaged_chart_installs_from_its_archive(tmp_path: Path) -> None:
    result = run_helm("package", str(CHART), "--destination", str(tmp_path / "out"))
    assert "symlink" not in result.stderr.lower(), result.stderr
    (archive,) = (tmp_path / "out").glob("kvol-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        assert all(m.isfile() or m.isdir() for m in tar.getmembers())
        tar.extractall(tmp_path / "unpacked", filter="data")
    for name in ("Chart.yaml", "values.yaml", "values.schema.json", "README.md"):
        assert f"kvol/{name}" in names
    assert {"kvol/crds/volumes.kvol.dev.yaml", "kvol/crds/volumebackends.kvol.dev.yaml"} <= names
    # The archive alone renders everything, the optional parts and the CRDs included.
    unpacked = tmp_path / "unpacked" / "kvol"
    rendered = run_helm(
        "template",
        "kvol",
        str(unpacked),
        "--include-crds",
        "--set",
        "dashboard.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true",
    )
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d}
    assert {"CustomResourceDefinition", "ConfigMap", "PrometheusRule", "DaemonSet"} <= kinds


def test_chart_readme_is_generated_from_values() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen_chart_readme.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    readme = (CHART / "README.md").read_text()
    assert '| `node.layout` | string | `"auto"` |' in readme
    assert "`backend.s3.credentialsSecret.name`" in readme


def test_readme_generator_refuses_an_undocumented_key(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "hack"))
    try:
        import gen_chart_readme
    finally:
        sys.path.remove(str(REPO / "hack"))
    text = "# -- Documented.\na: 1\nb:\n  # -- Documented too.\n  c: true\n  d: x\n"
    with pytest.raises(SystemExit, match=r"b\.d"):
        gen_chart_readme.rows(text)
    rows = gen_chart_readme.rows(text.replace("  d: x\n", ""))
    assert [(r.key, r.kind, r.default) for r in rows] == [
        ("a", "number", "1"),
        ("b.c", "bool", "true"),
    ]
