"""Derive every packaged copy from its one source, or check that they are up to date.

- ``charts/kvol/crds/*.yaml`` are copies of ``manifests/crds/`` (written by
  ``kvol-operator crds --write manifests/crds`` from operator/crds.py): the chart holds no
  links out of its directory, which Helm warns about and GitOps tools refuse (the dashboard
  and the alert rules live in the chart itself);
- ``manifests/alerts/kvol-rules.yaml`` is a copy of the chart's ``alerts/kvol-rules.yaml``;
- ``manifests/{rbac,operator,node,default}/`` are the chart rendered with its default values,
  less the labels only Helm sets, split kubebuilder-style and tied together by kustomizations.

Usage: hack/gen_manifests.py [--check]   (needs helm: hack/install-helm.sh)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "kvol"
MANIFESTS = ROOT / "manifests"
NAMESPACE = "kvol-system"
RELEASE = "kvol"
HEADER = "# Generated from charts/kvol by hack/gen_manifests.py; do not edit.\n"
#: Labels that describe a Helm release; plain manifests are not one.
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")

Doc = dict[str, Any]


def helm_binary() -> str:
    cache = Path(os.environ.get("KVOL_CACHE", Path.home() / ".cache" / "kvol"))
    helm = os.environ.get("HELM") or str(cache / "bin" / "helm")
    if not Path(helm).exists():
        sys.exit(f"helm is missing: run hack/install-helm.sh (looked for {helm})")
    return helm


def render_chart(values: Iterable[str] = ()) -> list[Doc]:
    """The chart's objects as ``helm template`` renders them."""
    args = [helm_binary(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for value in values:
        args += ["--set", value]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _strip_helm_labels(obj: Doc) -> None:
    for meta in (obj.get("metadata"), obj.get("spec", {}).get("template", {}).get("metadata")):
        labels = (meta or {}).get("labels")
        if labels:
            for key in HELM_LABELS:
                labels.pop(key, None)


def dump(docs: list[Doc]) -> str:
    return HEADER + "---\n".join(yaml.safe_dump(d, sort_keys=False, width=100) for d in docs)


def kustomization(resources: list[str], **extra: Any) -> str:
    body: Doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        **extra,
        "resources": resources,
    }
    return dump([body])


def _component(obj: Doc) -> str:
    return str(obj["metadata"].get("labels", {}).get("app.kubernetes.io/component", ""))


def generated_crds() -> list[Path]:
    crds = [
        p for p in sorted((MANIFESTS / "crds").glob("*.yaml")) if p.name != "kustomization.yaml"
    ]
    if not crds:
        sys.exit("manifests/crds/ holds no CRDs: run `kvol-operator crds --write manifests/crds`")
    return crds


def desired_files() -> dict[Path, str]:
    """Every derived file and the content it must have."""
    files: dict[Path, str] = {}
    crds = generated_crds()

    groups: dict[str, list[Doc]] = {}
    for obj in render_chart():
        _strip_helm_labels(obj)
        kind = obj["kind"]
        if kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            target = f"rbac/{_component(obj)}.yaml"
        elif kind == "Deployment":
            target = "operator/deployment.yaml"
        elif kind == "DaemonSet":
            target = "node/daemonset.yaml"
        elif kind == "CSIDriver":
            target = "node/csidriver.yaml"
        elif kind == "VolumeBackend":
            target = "default/backend.yaml"
        elif kind == "StorageClass":
            target = "default/storageclass.yaml"
        else:
            sys.exit(f"hack/gen_manifests.py does not know where {kind} goes")
        groups.setdefault(target, []).append(obj)
    for target, docs in groups.items():
        files[MANIFESTS / target] = dump(docs)

    for folder in ("rbac", "operator", "node"):
        names = sorted(t.split("/", 1)[1] for t in groups if t.startswith(folder + "/"))
        files[MANIFESTS / folder / "kustomization.yaml"] = kustomization(names)
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {
                "app.kubernetes.io/name": "kvol",
                "app.kubernetes.io/part-of": "kvol",
                # The node plugin is privileged: the namespace must admit it.
                "pod-security.kubernetes.io/enforce": "privileged",
            },
        },
    }
    files[MANIFESTS / "default" / "namespace.yaml"] = dump([namespace])
    files[MANIFESTS / "default" / "kustomization.yaml"] = kustomization(
        [
            "namespace.yaml",
            "../crds",
            "../rbac",
            "../operator",
            "../node",
            "backend.yaml",
            "storageclass.yaml",
        ],
        namespace=NAMESPACE,
    )
    files[MANIFESTS / "crds" / "kustomization.yaml"] = kustomization([p.name for p in crds])
    for crd in crds:
        files[CHART / "crds" / crd.name] = crd.read_text()
    # The alert rules as a plain Prometheus rules file, for installs without the chart.
    files[MANIFESTS / "alerts" / "kvol-rules.yaml"] = (
        CHART / "alerts" / "kvol-rules.yaml"
    ).read_text()
    return files


def stale_files(desired: Iterable[Path]) -> list[Path]:
    """Derived files left over from an older layout (in folders this script owns)."""
    owned = [CHART / "crds"] + [MANIFESTS / d for d in ("rbac", "operator", "node", "default")]
    return [p for d in owned if d.is_dir() for p in d.iterdir() if p not in desired]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report drift, change nothing")
    args = parser.parse_args(argv)
    desired = desired_files()
    outdated = [
        p
        for p, text in desired.items()
        if p.is_symlink() or not p.exists() or p.read_text() != text
    ]
    stale = stale_files(desired)
    if args.check:
        for path in outdated:
            print(f"out of date: {path.relative_to(ROOT)}")
        for path in stale:
            print(f"not generated: {path.relative_to(ROOT)}")
        if outdated or stale:
            print("run hack/gen_manifests.py to update them", file=sys.stderr)
            return 1
        return 0
    for path in outdated:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.write_text(desired[path])
        print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        print(f"removed {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
