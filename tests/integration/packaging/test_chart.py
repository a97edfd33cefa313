"""charts/kvol, linted and rendered by the real helm binary."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.integration.packaging.chart import (
    CHART,
    NAMESPACE,
    Obj,
    by_kind,
    container,
    helm,
    one,
    pod_specs,
    render,
    render_error,
    run_helm,
)
from tests.tools import REPO

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
)
#: Labels whose value changes across upgrades: never in an (immutable) selector.
MUTABLE_LABELS = ("app.kubernetes.io/version", "helm.sh/chart")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
EVERYTHING_ON = (
    "metrics.service.enabled=true",
    "metrics.serviceMonitor.enabled=true",
    "dashboard.enabled=true",
    "metrics.prometheusRule.enabled=true",
)


@pytest.fixture(scope="module")
def default_objects() -> list[Obj]:
    return render()


@pytest.fixture(scope="module")
def all_objects() -> list[Obj]:
    return render(*EVERYTHING_ON)


def test_lint_passes_in_strict_mode() -> None:
    for sets in ((), EVERYTHING_ON, ("backend.type=s3", "backend.s3.bucket=data")):
        args = ["lint", str(CHART), "--strict"]
        for value in sets:
            args += ["--set", value]
        result = run_helm(*args, check=False)
        assert result.returncode == 0, f"helm lint {sets}:\n{result.stdout}\n{result.stderr}"
        assert "0 chart(s) failed" in result.stdout


def test_default_render_has_every_component(default_objects: list[Obj]) -> None:
    kinds = sorted(o["kind"] for o in default_objects)
    assert kinds == sorted(
        ["ServiceAccount"] * 2
        + ["ClusterRole", "ClusterRoleBinding"] * 2
        + ["Role", "RoleBinding"]
        + ["Deployment", "DaemonSet", "CSIDriver", "VolumeBackend", "StorageClass"]
    )
    # Optional parts are off by default.
    assert not by_kind(default_objects, "Service")
    assert not by_kind(default_objects, "ServiceMonitor")
    assert not by_kind(default_objects, "ConfigMap")


def test_every_object_has_the_standard_labels(all_objects: list[Obj]) -> None:
    for obj in all_objects:
        labels = obj["metadata"].get("labels", {})
        missing = [key for key in STANDARD_LABELS if key not in labels]
        assert not missing, f"{obj['kind']}/{obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == "kvol"
        assert (
            labels["app.kubernetes.io/version"]
            == yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
        )
        for key, value in labels.items():
            assert len(str(value)) <= 63, f"label {key}={value} is too long"


def test_selectors_use_only_immutable_labels_and_match_their_pods(
    all_objects: list[Obj],
) -> None:
    for workload, _ in pod_specs(all_objects):
        selector = workload["spec"]["selector"]["matchLabels"]
        assert set(selector) == {
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
        }
        template_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= template_labels.items()
    services = by_kind(all_objects, "Service")
    monitors = by_kind(all_objects, "ServiceMonitor")
    assert len(services) == 2 and len(monitors) == 2
    for obj in services:
        assert not set(obj["spec"]["selector"]) & set(MUTABLE_LABELS)
    for obj in monitors:
        assert not set(obj["spec"]["selector"]["matchLabels"]) & set(MUTABLE_LABELS)
    # Each Service selects exactly the pods of its own component.
    for svc in services:
        component = svc["metadata"]["labels"]["app.kubernetes.io/component"]
        workload = next(
            w
            for w, _ in pod_specs(all_objects)
            if w["metadata"]["labels"]["app.kubernetes.io/component"] == component
        )
        assert svc["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize(
    "sets",
    [
        ("fullnameOverride=" + "a" * 80,),
        ("nameOverride=" + "b" * 70,),
    ],
    ids=["fullnameOverride", "nameOverride"],
)
def test_names_are_cut_at_63_characters(sets: tuple[str, ...]) -> None:
    objects = render(*sets, *EVERYTHING_ON, release="r" * 53)
    for obj in objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and not name.endswith("-"), name
        assert DNS_SUBDOMAIN.match(name), name
        for key, value in obj["metadata"]["labels"].items():
            assert len(str(value)) <= 63 and not str(value).endswith("-"), (key, value)
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(set(names)) == len(names), "cutting names made two objects collide"
    # The component suffix survives the cut, so the names stay distinct and readable.
    assert one(objects, "Deployment")["metadata"]["name"].endswith("-controller")
    assert one(objects, "DaemonSet")["metadata"]["name"].endswith("-node")


def test_release_name_containing_the_chart_name_is_not_repeated() -> None:
    objects = render(release="my-kvol")
    assert one(objects, "Deployment")["metadata"]["name"] == "my-kvol-controller"
    objects = render(release="storage")
    assert one(objects, "DaemonSet")["metadata"]["name"] == "storage-kvol-node"


def test_csidriver(default_objects: list[Obj]) -> None:
    driver = one(default_objects, "CSIDriver")
    assert driver["metadata"]["name"] == "csi.kvol.dev"
    assert driver["spec"]["attachRequired"] is False
    assert driver["spec"]["podInfoOnMount"] is True
    assert driver["spec"]["volumeLifecycleModes"] == ["Persistent", "Ephemeral"]
    assert "namespace" not in driver["metadata"]


def test_node_plugin_daemonset(default_objects: list[Obj]) -> None:
    ds = one(default_objects, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    # kvol-csi registers itself and answers the liveness probe: one container.
    assert [c["name"] for c in spec["containers"]] == ["driver"]
    driver = container(spec, "driver")
    assert driver["securityContext"]["privileged"] is True
    mounts = {m["name"]: m for m in driver["volumeMounts"]}
    assert mounts["pods-dir"]["mountPath"] == "/var/lib/kubelet/pods"
    assert mounts["pods-dir"]["mountPropagation"] == "Bidirectional"
    assert mounts["state-dir"]["mountPath"] == "/var/lib/kvol"
    assert mounts["store"]["mountPath"] == "/var/lib/kvol-store"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["pods-dir"]["hostPath"]["path"] == "/var/lib/kubelet/pods"
    assert volumes["plugin-dir"]["hostPath"]["path"] == "/var/lib/kubelet/plugins/csi.kvol.dev"
    assert volumes["registration-dir"]["hostPath"]["path"] == "/var/lib/kubelet/plugins_registry"
    assert volumes["store"]["hostPath"]["path"] == "/var/lib/kvol-store"
    # The plugin flags (kvol-csi): endpoint, node id from the downward API, state, store.
    assert "--endpoint=unix:///csi/csi.sock" in driver["args"]
    assert "--node-id=$(NODE_NAME)" in driver["args"]
    assert "--state-dir=/var/lib/kvol" in driver["args"]
    assert "--store=file:///var/lib/kvol-store" in driver["args"]
    assert "--metrics-port=9810" in driver["args"]
    assert "--log-level=INFO" in driver["args"]
    env = {e["name"]: e for e in driver["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # Registration: the kubelet's registry mounted in the driver, the socket's host path sent.
    assert mounts["registration-dir"]["mountPath"] == "/registration"
    assert "--registration-dir=/registration" in driver["args"]
    assert "--kubelet-endpoint=/var/lib/kubelet/plugins/csi.kvol.dev/csi.sock" in driver["args"]
    assert "--health-port=9808" in driver["args"]
    assert driver["resources"]["requests"]["cpu"] and driver["resources"]["requests"]["memory"]
    assert driver["resources"]["limits"]["memory"]
    assert driver["livenessProbe"]["httpGet"]["port"] == "healthz"
    assert {"name": "healthz", "containerPort": 9808, "protocol": "TCP"} in driver["ports"]
    assert spec["hostPID"] is True
    assert {"operator": "Exists"} in spec["tolerations"]


def test_sidecar_registration_mode() -> None:
    spec = one(render("node.registration=sidecar"), "DaemonSet")["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == [
        "driver",
        "node-driver-registrar",
        "liveness-probe",
    ]
    driver = container(spec, "driver")
    assert not [a for a in driver["args"] if a.startswith(("--registration-dir", "--health-port"))]
    assert "registration-dir" not in {m["name"] for m in driver["volumeMounts"]}
    registrar = container(spec, "node-driver-registrar")
    assert (
        "--kubelet-registration-path=/var/lib/kubelet/plugins/csi.kvol.dev/csi.sock"
        in registrar["args"]
    )
    # Every container has requests and a memory limit.
    for c in spec["containers"]:
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["resources"]["limits"]["memory"]
    # The driver's liveness check is served by the sidecar on the pod's network.
    assert "--http-endpoint=:9808" in container(spec, "liveness-probe")["args"]
    assert driver["livenessProbe"]["httpGet"]["port"] == "healthz"
    assert {"name": "healthz", "containerPort": 9808, "protocol": "TCP"} in driver["ports"]


def test_kubelet_dir_is_configurable() -> None:
    objects = render("node.kubeletDir=/var/data/kubelet/")
    spec = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert paths["pods-dir"] == "/var/data/kubelet/pods"
    assert paths["plugin-dir"] == "/var/data/kubelet/plugins/csi.kvol.dev"
    assert paths["registration-dir"] == "/var/data/kubelet/plugins_registry"
    driver = container(spec, "driver")
    pods = next(m for m in driver["volumeMounts"] if m["name"] == "pods-dir")
    assert pods["mountPath"] == "/var/data/kubelet/pods"
    assert "--kubelet-endpoint=/var/data/kubelet/plugins/csi.kvol.dev/csi.sock" in driver["args"]
    assert not any("/var/lib/kubelet" in json.dumps(o) for o in objects)
    objects = render("node.kubeletDir=/var/data/kubelet/", "node.registration=sidecar")
    spec = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    registrar = container(spec, "node-driver-registrar")
    assert (
        "--kubelet-registration-path=/var/data/kubelet/plugins/csi.kvol.dev/csi.sock"
        in registrar["args"]
    )
    assert not any("/var/lib/kubelet" in json.dumps(o) for o in objects)


def test_operator_deployment(default_objects: list[Obj]) -> None:
    deployment = one(default_objects, "Deployment", "controller")
    assert deployment["metadata"]["namespace"] == NAMESPACE
    spec = deployment["spec"]["template"]["spec"]
    operator = container(spec, "operator")
    assert operator["command"] == ["kvol-operator"]
    assert (
        operator["image"]
        == "kvol:" + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    )
    assert operator["resources"]["limits"]["memory"]
    assert operator["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["serviceAccountName"] == "kvol-controller"
    # With a filesystem backend it must see the store directory like the plugins do.
    store = next(v for v in spec["volumes"] if v["name"] == "store")
    assert store["hostPath"]["path"] == "/var/lib/kvol-store"


def test_operator_runs_as_non_root_with_an_s3_backend() -> None:
    objects = render("backend.type=s3", "backend.s3.bucket=data")
    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 65532
    assert "store" not in {v["name"] for v in spec["volumes"]}


def test_image_tag_and_digest() -> None:
    objects = render("image.kvol.repository=registry.example/kvol", "image.kvol.tag=1.2.3")
    for _, spec in pod_specs(objects):
        assert spec["containers"][0]["image"] == "registry.example/kvol:1.2.3"
    digest = "sha256:" + "0" * 64
    objects = render(f"image.kvol.digest={digest}")
    for _, spec in pod_specs(objects):
        assert spec["containers"][0]["image"] == f"kvol@{digest}"


def test_filesystem_backend(default_objects: list[Obj]) -> None:
    backend = one(default_objects, "VolumeBackend")
    assert backend["apiVersion"] == "kvol.dev/v1alpha1"
    assert backend["metadata"]["name"] == "default"
    assert "namespace" not in backend["metadata"]  # cluster-scoped
    assert backend["spec"] == {
        "type": "filesystem",
        "default": True,
        "filesystem": {"path": "/var/lib/kvol-store"},
    }
    # The store is a root-owned host directory the plugin writes as root: so does the operator.
    spec = one(default_objects, "Deployment", "controller")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == 0
    assert spec["securityContext"]["runAsGroup"] == 0
    assert spec["securityContext"]["runAsNonRoot"] is False
    assert "fsGroup" not in spec["securityContext"]


def test_s3_backend_and_credentials() -> None:
    objects = render(
        "backend.type=s3",
        "backend.s3.bucket=kvol-data",
        "backend.s3.prefix=/team/",
        "backend.s3.endpoint=http://minio.storage:9000",
        "backend.s3.region=us-east-1",
        "backend.s3.pathStyle=true",
        "backend.s3.credentialsSecret.name=kvol-s3",
    )
    backend = one(objects, "VolumeBackend")
    assert backend["spec"] == {
        "type": "s3",
        "default": True,
        "s3": {
            "bucket": "kvol-data",
            "prefix": "/team/",
            "endpoint": "http://minio.storage:9000",
            "region": "us-east-1",
            "pathStyle": True,
            "credentialsSecretRef": {"name": "kvol-s3", "namespace": NAMESPACE},
        },
    }
    spec = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    driver = container(spec, "driver")
    assert "--store=s3://kvol-data/team" in driver["args"]
    assert "store" not in {v["name"] for v in spec["volumes"]}
    env = {e["name"]: e for e in driver["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage:9000"
    assert env["AWS_ALLOW_HTTP"]["value"] == "true"
    assert env["AWS_REGION"]["value"] == "us-east-1"
    assert env["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"]["value"] == "false"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "kvol-s3",
        "key": "accessKeyId",
    }
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secretAccessKey"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("backend.type=nfs",), "at '/backend/type': value must be one of 'filesystem', 's3'"),
        (("backend.type=s3",), "backend.s3.bucket is required"),
        (("metrics.serviceMonitor.enabled=true",), "needs metrics.service.enabled"),
        (("serviceAccount.create=false",), "serviceAccount.controller.name is required"),
        (("backend.create=false",), "node.storeURL is required when backend.create is false"),
        (("node.registration=both",), "at '/node/registration': value must be one of"),
    ],
)
def test_bad_values_are_refused_with_a_message(sets: tuple[str, ...], message: str) -> None:
    assert message in render_error(*sets)


def test_toggles() -> None:
    objects = render("rbac.create=false")
    assert not [o for o in objects if o["apiVersion"].startswith("rbac.authorization")]
    objects = render(
        "serviceAccount.create=false",
        "serviceAccount.controller.name=ops-sa",
        "serviceAccount.node.name=node-sa",
    )
    assert not by_kind(objects, "ServiceAccount")
    accounts = {w["kind"]: s["serviceAccountName"] for w, s in pod_specs(objects)}
    assert accounts == {"Deployment": "ops-sa", "DaemonSet": "node-sa"}
    subjects = {
        b["metadata"]["name"]: b["subjects"][0]["name"]
        for b in by_kind(objects, "ClusterRoleBinding")
    }
    assert subjects == {"kvol-controller": "ops-sa", "kvol-node": "node-sa"}
    objects = render("backend.create=false", "csiDriver.create=false", "node.storeURL=s3://b/p")
    assert not by_kind(objects, "VolumeBackend") and not by_kind(objects, "CSIDriver")
    driver = container(one(objects, "DaemonSet")["spec"]["template"]["spec"], "driver")
    assert "--store=s3://b/p" in driver["args"]


def test_node_plugin_may_only_post_events(default_objects: list[Obj]) -> None:
    """The plugin finds volumes in the store's catalog: its token only posts events on
    pods whose final commit waits."""
    spec = one(default_objects, "DaemonSet")["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is True
    bound = [
        b["roleRef"]["name"]
        for b in by_kind(default_objects, "ClusterRoleBinding")
        if any(s["name"] == spec["serviceAccountName"] for s in b["subjects"])
    ]
    assert len(bound) == 1
    (role,) = [
        r for r in by_kind(default_objects, "ClusterRole") if r["metadata"]["name"] == bound[0]
    ]
    assert role["rules"] == [
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}
    ]


def test_metrics_services_and_monitors(all_objects: list[Obj]) -> None:
    ports = {
        s["metadata"]["labels"]["app.kubernetes.io/component"]: s["spec"]["ports"][0]["port"]
        for s in by_kind(all_objects, "Service")
    }
    assert ports == {"controller": 8080, "node": 9810}
    for monitor in by_kind(all_objects, "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
        # Per-volume series keep their Volume's namespace label.
        assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    # The named port the Services target exists on the pods.
    for _, spec in pod_specs(all_objects):
        assert "metrics" in {p["name"] for p in spec["containers"][0]["ports"]}


def test_dashboard_configmap_holds_the_dashboard(all_objects: list[Obj]) -> None:
    configmap = one(all_objects, "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards" / "kvol.json").read_text())
    assert json.loads(configmap["data"]["kvol.json"]) == shipped


def test_chart_crds_are_the_generated_crds() -> None:
    generated = sorted(
        p.name
        for p in (REPO / "manifests" / "crds").glob("*.yaml")
        if p.name != "kustomization.yaml"
    )
    in_chart = sorted(p.name for p in (CHART / "crds").iterdir())
    assert generated and in_chart == generated, "run hack/gen_manifests.py"
    # Byte for byte (test_chart_values.py): the chart's copies are generated, never edited.
    objects = render(include_crds=True)
    crds = by_kind(objects, "CustomResourceDefinition")
    assert {o["metadata"]["name"] for o in crds} == {"volumes.kvol.dev", "volumebackends.kvol.dev"}
    for crd in crds:
        source = REPO / "manifests" / "crds" / f"{crd['metadata']['name']}.yaml"
        assert crd == yaml.safe_load(source.read_text())


def test_packaged_chart_carries_the_crds(tmp_path: Path) -> None:
    run_helm("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("kvol-*.tgz")
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        crd = members["kvol/crds/volumes.kvol.dev.yaml"]
        assert crd.isfile(), "helm package must store the CRD's content, not a link"
        data = tar.extractfile(crd)
        assert data is not None
        assert data.read() == (REPO / "manifests" / "crds" / "volumes.kvol.dev.yaml").read_bytes()
        assert members["kvol/dashboards/kvol.json"].isfile()


def test_derived_files_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen_manifests.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HELM": helm()},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kinds_and_names_are_valid_kubernetes_names(all_objects: list[Obj]) -> None:
    for obj in all_objects:
        name = obj["metadata"]["name"]
        # Services and namespaces' objects addressed by DNS must be DNS labels.
        pattern = DNS_LABEL if obj["kind"] in ("Service", "Namespace") else DNS_SUBDOMAIN
        assert pattern.match(name), f"{obj['kind']} name {name!r}"


def test_values_file_documents_every_top_level_key() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    templates = "\n".join(p.read_text() for p in (CHART / "templates").iterdir())
    for key in values:
        assert f".Values.{key}" in templates or f"$.Values.{key}" in templates, (
            f"values.yaml has {key!r} but no template uses it"
        )


def _help(script: str, *args: str) -> str:
    """``--help`` of one of the package's console scripts, as installed."""
    binary = Path(sys.executable).parent / script
    assert binary.exists(), f"{script} is not installed in this environment (hack/setup-venv.sh)"
    result = subprocess.run(
        [str(binary), *args, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("-")]


def test_operator_args_are_flags_of_kvol_operator() -> None:
    objects = render("controller.verbose=true", "controller.extraArgs={--debug}")
    operator = container(one(objects, "Deployment")["spec"]["template"]["spec"], "operator")
    assert operator["command"] == ["kvol-operator"] and operator["args"][0] == "run"
    usage = _help("kvol-operator", "run")
    for flag in _flags(operator["args"]):
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", usage), (
            f"the chart passes {flag} but `kvol-operator run` has no such flag"
        )
    # The ports the chart declares are the ones the operator serves on.
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert f"--metrics-port={ports['metrics']}" in operator["args"]
    assert f"--liveness-port={ports['healthz']}" in operator["args"]


def test_plugin_args_are_flags_of_kvol_csi(default_objects: list[Obj]) -> None:
    driver = container(one(default_objects, "DaemonSet")["spec"]["template"]["spec"], "driver")
    assert driver["command"] == ["kvol-csi"]
    usage = _help("kvol-csi")
    for flag in _flags(driver["args"]):
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", usage), (
            f"the chart passes {flag} but kvol-csi has no such flag"
        )
    ports = {p["name"]: p["containerPort"] for p in driver["ports"]}
    assert f"--metrics-port={ports['metrics']}" in driver["args"]
