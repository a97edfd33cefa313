"""The chart and the plain manifests against a real kube-apiserver (and etcd) on loopback.

The control plane is the operator tests' (tests/integration/operator/cluster.py): the same
binaries, started the same way, with the generated CRDs applied for real.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
import yaml

from tests.integration.operator.cluster import Cluster, install_crds, start_control_plane
from tests.integration.packaging.chart import CHART, NAMESPACE, Obj, helm, render
from tests.tools import REPO, tool

pytestmark = pytest.mark.kube

HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    etcd = tool("etcd", "install-etcd.sh")
    kubectl = tool("kubectl", "install-kube.sh")
    directory = tmp_path_factory.mktemp("kube")
    apiserver = tool("kube-apiserver", "install-kube.sh")
    with start_control_plane(etcd, apiserver, kubectl, directory) as c:
        install_crds(c)
        c.kubectl("create", "namespace", NAMESPACE)
        yield c


def apply_dry_run(cluster: Cluster, objects: list[Obj]) -> subprocess.CompletedProcess[str]:
    """``kubectl apply --dry-run=server``: the API server validates and admits, stores nothing."""
    return cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=yaml.safe_dump_all(objects),
        check=False,
    )


def run_helm(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [helm(), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
    return result


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("metrics.service.enabled=true", "dashboard.enabled=true"),
        (
            "backend.type=s3",
            "backend.s3.bucket=kvol-data",
            "backend.s3.endpoint=http://127.0.0.1:9000",
            "backend.s3.credentialsSecret.name=kvol-s3",
            "node.kubeletDir=/var/data/kubelet",
        ),
    ],
    ids=["defaults", "metrics-and-dashboard", "s3"],
)
def test_rendered_chart_is_accepted_by_the_api_server(
    cluster: Cluster, sets: tuple[str, ...]
) -> None:
    objects = render(*sets)
    result = apply_dry_run(cluster, objects)
    assert result.returncode == 0, result.stderr
    for obj in objects:
        assert f"{obj['metadata']['name']} created (server dry run)" in result.stdout


def test_api_server_refuses_what_the_schema_forbids(cluster: Cluster) -> None:
    """The dry run above is a real check: a backend the CRD's rules refuse is refused."""
    backend = next(o for o in render() if o["kind"] == "VolumeBackend")
    backend["spec"]["s3"] = {"bucket": "both-blocks"}
    result = apply_dry_run(cluster, [backend])
    assert result.returncode != 0
    assert "set exactly the block matching spec.type" in result.stderr


def _strip_helm_labels(obj: Obj) -> Obj:
    obj = json.loads(json.dumps(obj))
    for meta in (obj["metadata"], obj.get("spec", {}).get("template", {}).get("metadata")):
        for key in HELM_LABELS:
            (meta or {}).get("labels", {}).pop(key, None)
    return obj


def _key(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def test_plain_manifests_are_the_chart_and_are_accepted(cluster: Cluster) -> None:
    built = cluster.kubectl("kustomize", str(REPO / "manifests" / "default"))
    objects = {_key(o): o for o in yaml.safe_load_all(built.stdout) if o}
    chart = {_key(o): _strip_helm_labels(o) for o in render(include_crds=True)}
    assert set(objects) == set(chart) | {("Namespace", NAMESPACE)}
    for key, expected in chart.items():
        got = objects[key]
        if got.get("kind") == "VolumeBackend":
            # kustomize cannot know a custom kind is cluster-scoped; the server drops it.
            got["metadata"].pop("namespace", None)
        assert got == expected, f"manifests/ differ from the chart for {key}"
    result = cluster.kubectl("apply", "--dry-run=server", "-k", str(REPO / "manifests" / "default"))
    assert "daemonset.apps/kvol-node created (server dry run)" in result.stdout


def test_helm_install_upgrade_uninstall(cluster: Cluster) -> None:
    """A real release: objects stored, an upgrade that changes labels and image keeps the
    immutable selectors, and an uninstall that removes it."""
    install = run_helm(cluster, "install", "kvol", str(CHART), "--namespace", NAMESPACE)
    assert "VolumeBackend/default (file:///var/lib/kvol-store)" in install.stdout  # NOTES
    assert "driver: csi.kvol.dev" in install.stdout
    daemonset = cluster.get_json("daemonset", "kvol-node", "-n", NAMESPACE)
    assert daemonset["spec"]["template"]["spec"]["containers"][0]["name"] == "driver"
    assert cluster.get_json("csidriver", "csi.kvol.dev")["spec"]["podInfoOnMount"] is True
    assert cluster.get_json("volumebackend", "default")["spec"]["default"] is True
    # The stored operator runs as root, to write the root-owned filesystem store: 0 and
    # false survive values, template and API server alike.
    stored = cluster.get_json("deployment", "kvol-controller", "-n", NAMESPACE)
    context = stored["spec"]["template"]["spec"]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["runAsNonRoot"]) == (0, 0, False)
    run_helm(
        cluster,
        "upgrade",
        "kvol",
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--set",
        "image.kvol.tag=0.2.0",
        "--set",
        "commonLabels.team=storage",
    )
    deployment = cluster.get_json("deployment", "kvol-controller", "-n", NAMESPACE)
    assert deployment["metadata"]["labels"]["team"] == "storage"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "kvol:0.2.0"
    run_helm(cluster, "uninstall", "kvol", "--namespace", NAMESPACE)
    assert cluster.get_json("daemonset", "kvol-node", "-n", NAMESPACE) is None
    # CRDs stay (Helm never deletes what crds/ installed): volumes outlive the release.
    assert cluster.get_json("crd", "volumes.kvol.dev") is not None


def test_helm_install_refuses_values_the_schema_forbids(cluster: Cluster) -> None:
    """A typo fails the install with the key it is about, and nothing is installed."""
    for value, where in (("node.layout=bogus", "/node/layout"), ("node.layuot=plain", "/node")):
        result = subprocess.run(
            [
                helm(),
                f"--kubeconfig={cluster.kubeconfig}",
                "install",
                "typo",
                str(CHART),
                "--namespace",
                NAMESPACE,
                "--set",
                value,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode != 0
        assert "values don't meet the specifications of the schema" in result.stderr
        assert f"at '{where}'" in result.stderr, result.stderr
    releases = run_helm(cluster, "list", "--all", "--namespace", NAMESPACE, "--short")
    assert "typo" not in releases.stdout.split()
