"""The e2e cluster as the tests reach it: kubectl and helm only, the way users work.

``hack/cluster-up.sh`` makes the cluster and writes ``kubectl`` and ``helm`` wrappers that
reach its network; ``hack/build-image.sh`` puts kvol's image into its containerd; the chart
is installed from ``charts/kvol``. Plain Python, so a benchmark can drive it the same way.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.tools import run_kubectl

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DIR = Path(os.environ.get("KVOL_CLUSTER_DIR", "/var/lib/kvol-cluster"))
CLUSTER_RUN = Path(os.environ.get("KVOL_CLUSTER_RUN", "/run/kvol-cluster"))
RELEASE = "kvol"
RELEASE_NAMESPACE = "kvol-system"
DRIVER = "csi.kvol.dev"
#: Built by hack/build-image.sh and imported into the node: nothing is ever pulled.
BUSYBOX = "kvol.test/busybox:1"
KVOL_IMAGE_TAG = "dev"
KVOL_IMAGE = f"docker.io/library/kvol:{KVOL_IMAGE_TAG}"
#: The node's address on the cluster's bridge (hack/cluster-lib.sh): pods reach it, nothing
#: outside the cluster's network namespace does.
NODE_IP = "10.88.0.1"
#: MinIO of ``hack/cluster-up.sh --minio`` (hack/cluster-lib.sh): address, bucket,
#: and the file holding its credentials.
MINIO_ENDPOINT = f"http://{NODE_IP}:9000"
MINIO_BUCKET = "kvol-e2e"
MINIO_ENV = CLUSTER_DIR / "minio.env"
MINIO_SECRET = "kvol-minio"
#: Values of every e2e install: the locally built image, the cluster's own directories,
#: and short intervals so tests wait little.
VALUES = (
    f"image.kvol.tag={KVOL_IMAGE_TAG}",
    "image.kvol.pullPolicy=Never",
    f"node.kubeletDir={CLUSTER_DIR}/kubelet",
    f"node.stateDir={CLUSTER_DIR}/kvol-state",
    "node.autocommitSeconds=2",
    "controller.statusIntervalSeconds=2",
    "node.logLevel=DEBUG",
)
#: The store of the install, by backend: a directory on the node, or the cluster's MinIO
#: with explicit credentials from a Secret, as users of an S3-compatible store set it.
BACKEND_VALUES = {
    "filesystem": (f"backend.filesystem.hostPath={CLUSTER_DIR}/store",),
    "minio": (
        "backend.type=s3",
        f"backend.s3.bucket={MINIO_BUCKET}",
        f"backend.s3.endpoint={MINIO_ENDPOINT}",
        "backend.s3.region=us-east-1",
        "backend.s3.pathStyle=true",
        f"backend.s3.credentialsSecret.name={MINIO_SECRET}",
    ),
}
T = TypeVar("T")


class SetupFailed(RuntimeError):
    """A part of the e2e cluster is missing or broken; the message says what to run."""


def run_script(name: str, *args: str, timeout: float = 900) -> str:
    """Run ``hack/<name>``; its stderr on failure, naming the script."""
    script = REPO / "hack" / name
    started = time.monotonic()
    result = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise SetupFailed(
            f"hack/{name} {' '.join(args)} failed ({result.returncode}); "
            f"its output ends with:\n{result.stderr[-4000:]}"
        )
    return f"hack/{name} {' '.join(args)}: {time.monotonic() - started:.1f}s"


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}"
            )
        time.sleep(interval)


@dataclass
class Cluster:
    kubectl_binary: Path = CLUSTER_DIR / "bin" / "kubectl"
    helm_binary: Path = CLUSTER_DIR / "bin" / "helm"
    #: The backend kvol was last installed with by :meth:`install` (None: not yet).
    backend: str | None = None

    def install(self, backend: str = "filesystem", *extra_values: str) -> None:
        """``helm upgrade --install`` of the chart with the e2e values and ``backend``'s
        store; waits until the operator and the node plugin run. Raises SetupFailed."""
        if backend == "minio":
            run_script("cluster-up.sh", "--minio")  # starts only MinIO if the rest runs
            self._minio_secret()
        args = ["upgrade", "--install", RELEASE, str(REPO / "charts" / "kvol")]
        args += ["--namespace", RELEASE_NAMESPACE, "--create-namespace", "--wait"]
        args += ["--timeout", "5m"]
        for value in (*VALUES, *BACKEND_VALUES[backend], *extra_values):
            args += ["--set", value]
        # The image keeps its tag across rebuilds: its digest in the pods' annotations
        # rolls them when it changed, so a kept cluster runs the code under test.
        digest = kvol_image_digest()
        for component in ("controller", "node"):
            args += ["--set-string", f"{component}.podAnnotations.kvol\\.dev/image={digest}"]
        try:
            self.helm(*args)
        except SetupFailed as exc:
            pods = self.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
            events = self.kubectl("get", "events", "-n", RELEASE_NAMESPACE, check=False).stdout
            raise SetupFailed(f"{exc}\npods:\n{pods}\nevents:\n{events}") from None
        self.backend = backend

    def _minio_secret(self) -> None:
        env = dict(line.split("=", 1) for line in MINIO_ENV.read_text().splitlines() if "=" in line)
        self.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RELEASE_NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": MINIO_SECRET, "namespace": RELEASE_NAMESPACE},
                "stringData": {
                    "accessKeyId": env["MINIO_ROOT_USER"],
                    "secretAccessKey": env["MINIO_ROOT_PASSWORD"],
                },
            },
        )

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run_kubectl(
            [str(self.kubectl_binary)], args, input=input, check=check, timeout=timeout
        )

    def helm(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.helm_binary), *args], capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise SetupFailed(f"helm {' '.join(args)} failed:\n{result.stderr[-4000:]}")
        return result

    def apply(self, *objects: dict[str, Any], namespace: str | None = None) -> None:
        args = ["apply", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        self.kubectl(*args, input=body)

    def get(self, kind: str, name: str, namespace: str | None = None) -> Any:
        """The object as JSON, or None when it does not exist."""
        args = ["get", kind, name, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        result = self.kubectl(*args, check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(f"kubectl get {kind} {name}: {result.stderr}")
        return json.loads(result.stdout)

    def events(self, namespace: str, name: str) -> list[str]:
        out = self.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            f"involvedObject.name={name}",
            "-o",
            "jsonpath={range .items[*]}{.reason}: {.message}{'\\n'}{end}",
        ).stdout
        return [line for line in out.splitlines() if line]

    def running_pods(self, component: str, field: str) -> list[str]:
        """``field`` (a JSONPath within a pod, e.g. ``.status.podIP``) of each running pod
        of kvol's ``component`` (controller, node); fails if there is none."""
        out = self.kubectl(
            "get",
            "pods",
            "-n",
            RELEASE_NAMESPACE,
            "-l",
            f"app.kubernetes.io/component={component}",
            "--field-selector=status.phase=Running",
            "-o",
            f"jsonpath={{.items[*]{field}}}",
        ).stdout.split()
        assert out, f"no running {component} pod of kvol"
        return out

    def logs(self, namespace: str, pod: str) -> str:
        return self.kubectl("logs", "-n", namespace, pod).stdout

    def pod_phase(self, namespace: str, pod: str) -> str | None:
        obj = self.get("pod", pod, namespace)
        return None if obj is None else str(obj["status"].get("phase"))

    def wait_pod_phase(
        self, namespace: str, pod: str, phases: tuple[str, ...], timeout: float = 120
    ) -> str:
        def check() -> str | None:
            phase = self.pod_phase(namespace, pod)
            if phase == "Failed" and "Failed" not in phases:
                raise AssertionError(
                    f"pod {namespace}/{pod} failed:\n{self.logs(namespace, pod)}\n"
                    + "\n".join(self.events(namespace, pod))
                )
            return phase if phase in phases else None

        try:
            return wait_for(check, timeout, f"pod {namespace}/{pod} to be {'/'.join(phases)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nevents: {self.events(namespace, pod)}") from None

    def delete_pod(self, namespace: str, pod: str, timeout: float = 180) -> None:
        """Delete and wait until the kubelet has torn it down: its CSI volumes unpublished,
        so their final commits landed.

        Waiting for the deletion alone is not enough: a pod that already completed leaves
        the API at once when deleted, and the kubelet unmounts its volumes afterwards, while
        the next pod of a test may already be publishing."""
        obj = self.get("pod", pod, namespace)
        self.kubectl(
            "delete",
            "pod",
            pod,
            "-n",
            namespace,
            "--wait=true",
            f"--timeout={timeout:.0f}s",
            timeout=timeout + 30,
        )
        if obj is not None:
            uid = str(obj["metadata"]["uid"])
            wait_for(
                lambda: not self.csi_volumes_of(uid),
                timeout,
                f"the kubelet to unpublish the volumes of pod {namespace}/{pod}",
                interval=0.2,
            )

    @staticmethod
    def csi_volumes_of(uid: str) -> list[str]:
        """The CSI volumes the kubelet still has set up for pod ``uid`` on the node (the
        kubelet removes each one's directory once NodeUnpublishVolume succeeded)."""
        volumes = CLUSTER_DIR / "kubelet" / "pods" / uid / "volumes" / "kubernetes.io~csi"
        try:
            return sorted(os.listdir(volumes))
        except FileNotFoundError:
            return []

    def volume_phase(self, namespace: str, name: str) -> str | None:
        obj = self.get("volumes.kvol.dev", name, namespace)
        return None if obj is None else obj.get("status", {}).get("phase")

    def create_volume(self, namespace: str, name: str, **spec: Any) -> None:
        """Apply a Volume and wait until the operator has made it Ready."""
        self.apply(volume(name, **spec), namespace=namespace)
        wait_for(
            lambda: self.volume_phase(namespace, name) == "Ready",
            120,
            f"Volume {namespace}/{name} to be Ready",
        )


def kvol_image_digest() -> str:
    """The digest of kvol's image in the node's containerd (hack/build-image.sh kvol)."""
    socket = CLUSTER_RUN / "containerd" / "containerd.sock"
    result = subprocess.run(
        ["ctr", "--address", str(socket), "-n", "k8s.io", "images", "ls", f"name=={KVOL_IMAGE}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    for line in result.stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == KVOL_IMAGE:
            return fields[2]
    raise SetupFailed(
        f"{KVOL_IMAGE} is not in the node's containerd: run hack/build-image.sh kvol "
        f"({result.stderr.strip()})"
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def volume(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kvol.dev/v1alpha1",
        "kind": "Volume",
        "metadata": {"name": name},
        "spec": spec,
    }


def pod(
    name: str,
    script: str,
    *,
    inline: str | None = None,
    claim: str | None = None,
    mount: str = "/data",
    read_only: bool = False,
    restart: str = "Never",
    grace: int = 30,
    attributes: dict[str, str] | None = None,
    image: str = BUSYBOX,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """A pod running ``script`` (busybox sh, unless ``command``) with one kvol volume,
    inline or through a claim."""
    source: dict[str, Any]
    if inline is not None:
        source = {
            "csi": {
                "driver": DRIVER,
                "readOnly": read_only,
                "volumeAttributes": {"volume": inline, **(attributes or {})},
            }
        }
    elif claim is not None:
        source = {"persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
    else:
        raise ValueError("a pod needs inline= or claim=")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": grace,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": [*(command or ["sh", "-c"]), script],
                    "volumeMounts": [{"name": "vol", "mountPath": mount, "readOnly": read_only}],
                }
            ],
            "volumes": [{"name": "vol", **source}],
        },
    }
