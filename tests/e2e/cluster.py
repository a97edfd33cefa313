"""The e2e cluster as the tests reach it: kubectl and helm only, the way users work.

Two clusters can be under test (see conftest): :class:`Cluster`, the one-node cluster
(``hack/cluster-up.sh`` makes it and writes ``kubectl`` and ``helm`` wrappers that reach its
network; ``hack/build-image.sh`` puts kvol's image into its containerd), and
:class:`KindCluster`, the offline kind cluster of ``KVOL_KIND_OFFLINE=1 hack/kind-up.sh``
(three nodes as Docker containers of a private daemon; the image loaded into every node).
The chart is installed from ``charts/kvol`` on both. What the tests do on a node, rather
than through the API, goes through a method here, so every test runs on either.
Plain Python, so a benchmark can drive it the same way.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.tools import run_kubectl

#: The cluster the e2e tier runs against (see conftest): "one-node" or "kind".
TARGETS = ("one-node", "kind")
TARGET = os.environ.get("KVOL_E2E_TARGET", "one-node")
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
#: The offline kind cluster (hack/kind-up.sh, hack/kind-docker.sh, hack/kind-minio.sh): its
#: name, the directory of its kubeconfig and kubectl/helm wrappers, the private Docker's
#: socket, and the host directory every node mounts as the filesystem store.
KIND_CLUSTER = os.environ.get("KVOL_KIND_CLUSTER", "kvol")
KIND_DIR = Path(os.environ.get("KVOL_KIND_DIR", "/var/lib/kvol-kind"))
KIND_RUN = Path(os.environ.get("KVOL_KIND_RUN", "/run/kvol-kind"))
KIND_NETNS = os.environ.get("KVOL_KIND_NETNS", "kvol-kind")
KIND_STORE = Path(os.environ.get("KVOL_KIND_STORE", "/tmp/kvol-kind-store"))
#: The chart's default filesystem store path, where hack/kind-config.yaml mounts KIND_STORE.
KIND_NODE_STORE = "/var/lib/kvol-store"
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
    """The one-node cluster of hack/cluster-up.sh: its node is this machine, in the network
    namespace kvol-e2e."""

    kubectl_binary: Path = CLUSTER_DIR / "bin" / "kubectl"
    helm_binary: Path = CLUSTER_DIR / "bin" / "helm"
    #: The backend kvol was last installed with by :meth:`install` (None: not yet).
    backend: str | None = None
    #: The kubeconfig context every kubectl and helm call names (None: the current one).
    context: str | None = None
    #: The node pods of the tests run on unless they name one (None: wherever the scheduler
    #: puts them; the one-node cluster has one node).
    pinned_node: str | None = None
    #: The filesystem store as a directory of this machine (see BACKEND_VALUES).
    store: Path = CLUSTER_DIR / "store"
    #: A network namespace from which pods' addresses are reachable (nsenter --net=).
    netns: Path = Path("/var/run/netns/kvol-e2e")

    def values(self, backend: str) -> tuple[str, ...]:
        """The chart values of an e2e install on ``backend`` (before extra ones)."""
        return (*VALUES, *BACKEND_VALUES[backend])

    def start_minio(self) -> dict[str, str]:
        """Run MinIO for the s3 backend (its bucket made); its credentials file's entries."""
        run_script("cluster-up.sh", "--minio")  # starts only MinIO if the rest runs
        return read_env(MINIO_ENV)

    def image_digest(self) -> str:
        return kvol_image_digest()

    def node_of(self, namespace: str, pod: str) -> str:
        """The node pod ``namespace/pod`` was scheduled to."""
        obj = self.get("pod", pod, namespace)
        assert obj is not None, f"no pod {namespace}/{pod}"
        return str(obj["spec"]["nodeName"])

    def restart_kubelet(self, node: str) -> None:
        """SIGKILL the kubelet of ``node`` and have it started again, as an operator would."""
        pid = int((CLUSTER_RUN / "pids" / "kubelet.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        time.sleep(2)
        # Starts only what is missing, the kubelet; run as `flock LOCK hack/cluster-up.sh`
        # runs it, with a descriptor of its caller open.
        with tempfile.TemporaryFile() as held:
            subprocess.run(
                [str(REPO / "hack" / "cluster-up.sh")],
                pass_fds=(held.fileno(),),
                capture_output=True,
                check=True,
                timeout=300,
            )
            kubelet = int((CLUSTER_RUN / "pids" / "kubelet.pid").read_text())
            assert kubelet != pid
            assert not _holds(kubelet, held.fileno()), "the kubelet kept its starter's descriptor"

    def install(self, backend: str = "filesystem", *extra_values: str) -> None:
        """``helm upgrade --install`` of the chart with the e2e values and ``backend``'s
        store; waits until the operator and the node plugin run. Raises SetupFailed."""
        if backend == "minio":
            self._minio_secret(self.start_minio())
        args = ["upgrade", "--install", RELEASE, str(REPO / "charts" / "kvol")]
        args += ["--namespace", RELEASE_NAMESPACE, "--create-namespace", "--wait"]
        args += ["--timeout", "5m"]
        for value in (*self.values(backend), *extra_values):
            args += ["--set", value]
        # The image keeps its tag across rebuilds: its digest in the pods' annotations
        # rolls them when it changed, so a kept cluster runs the code under test.
        digest = self.image_digest()
        for component in ("controller", "node"):
            args += ["--set-string", f"{component}.podAnnotations.kvol\\.dev/image={digest}"]
        try:
            self.helm(*args)
        except SetupFailed as exc:
            pods = self.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
            events = self.kubectl("get", "events", "-n", RELEASE_NAMESPACE, check=False).stdout
            raise SetupFailed(f"{exc}\npods:\n{pods}\nevents:\n{events}") from None
        self.backend = backend

    def _minio_secret(self, env: dict[str, str]) -> None:
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
        command = [str(self.kubectl_binary)]
        if self.context:
            command += ["--context", self.context]
        return run_kubectl(command, args, input=input, check=check, timeout=timeout)

    def helm(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        command = [str(self.helm_binary)]
        if self.context:
            command += ["--kube-context", self.context]
        result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise SetupFailed(f"helm {' '.join(args)} failed:\n{result.stderr[-4000:]}")
        return result

    def apply(self, *objects: dict[str, Any], namespace: str | None = None) -> None:
        """``kubectl apply`` of ``objects``; a pod that names no node of its own runs on
        :attr:`pinned_node`, if set."""
        if self.pinned_node:
            objects = tuple(self._pinned(obj) for obj in objects)
        args = ["apply", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        self.kubectl(*args, input=body)

    def _pinned(self, obj: dict[str, Any]) -> dict[str, Any]:
        spec = obj.get("spec", {})
        if obj.get("kind") != "Pod" or {"nodeName", "nodeSelector", "affinity"} & set(spec):
            return obj
        # A selector, not nodeName: the scheduler still places it (claims bind on it).
        selector = {"kubernetes.io/hostname": self.pinned_node}
        return {**obj, "spec": {**spec, "nodeSelector": selector}}

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
        if obj is not None and obj["spec"].get("nodeName"):
            uid = str(obj["metadata"]["uid"])
            node = str(obj["spec"]["nodeName"])
            wait_for(
                lambda: not self.csi_volumes_of(uid, node),
                timeout,
                f"the kubelet to unpublish the volumes of pod {namespace}/{pod}",
                interval=0.2,
            )

    def csi_volumes_of(self, uid: str, node: str) -> list[str]:
        """The CSI volumes the kubelet still has set up for pod ``uid`` on ``node`` (the
        kubelet removes each one's directory once NodeUnpublishVolume succeeded)."""
        volumes = CLUSTER_DIR / "kubelet" / "pods" / uid / "volumes" / "kubernetes.io~csi"
        try:
            return sorted(os.listdir(volumes))
        except FileNotFoundError:
            return []

    def workers(self) -> list[str]:
        """The nodes pods run on (the control plane is tainted against them)."""
        out = self.kubectl(
            "get",
            "nodes",
            "-l",
            "!node-role.kubernetes.io/control-plane",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ).stdout
        return sorted(out.split())

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


@dataclass
class KindCluster(Cluster):
    """The offline kind cluster of ``KVOL_KIND_OFFLINE=1 hack/kind-up.sh``: a control plane
    and two workers, Docker containers of the private daemon of hack/kind-docker.sh, all
    mounting one host directory as the filesystem store. What the tests do on a node runs
    there through ``docker exec``; pods of the tests run on the first worker unless they
    name a node, so a test sees one node plugin, as on the one-node cluster."""

    kubectl_binary: Path = KIND_DIR / "bin" / "kubectl"
    helm_binary: Path = KIND_DIR / "bin" / "helm"
    context: str | None = f"kind-{KIND_CLUSTER}"
    pinned_node: str | None = f"{KIND_CLUSTER}-worker"
    store: Path = KIND_STORE
    netns: Path = Path("/var/run/netns") / KIND_NETNS

    def values(self, backend: str) -> tuple[str, ...]:
        # The kind nodes keep the chart's own directories; only the store differs.
        own = ("node.kubeletDir", "node.stateDir")
        common = tuple(v for v in VALUES if v.split("=", 1)[0] not in own)
        if backend == "filesystem":
            return (*common, f"backend.filesystem.hostPath={KIND_NODE_STORE}")
        return (*common, *self._minio_values())

    def _minio_values(self) -> tuple[str, ...]:
        endpoint = (KIND_RUN / "minio.endpoint").read_text().strip()
        return tuple(
            f"backend.s3.endpoint={endpoint}" if v.startswith("backend.s3.endpoint=") else v
            for v in BACKEND_VALUES["minio"]
        )

    def start_minio(self) -> dict[str, str]:
        run_script("kind-minio.sh", "up")
        return read_env(KIND_DIR / "minio.env")

    def docker(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The private Docker daemon that runs the nodes (its socket needs no namespace)."""
        env = {**os.environ, "DOCKER_HOST": f"unix://{KIND_RUN / 'docker.sock'}"}
        return subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, env=env
        )

    def on_node(self, node: str, *command: str) -> subprocess.CompletedProcess[str]:
        """``command`` run on ``node``; its result, unchecked."""
        return self.docker("exec", node, *command)

    def nodes(self) -> list[str]:
        result = self.docker(
            "ps",
            "--filter",
            f"label=io.x-k8s.kind.cluster={KIND_CLUSTER}",
            "--format",
            "{{.Names}}",
        )
        if result.returncode != 0 or not result.stdout.split():
            raise SetupFailed(
                f"no node of kind cluster {KIND_CLUSTER} runs: run KVOL_KIND_OFFLINE=1 "
                f"hack/kind-up.sh ({result.stderr.strip()})"
            )
        return sorted(result.stdout.split())

    def image_digest(self) -> str:
        """The digest of kvol's image, the same on every node (hack/kind-up.sh loads it)."""
        digests = set()
        for node in self.nodes():
            listed = self.on_node(
                node, "ctr", "-n", "k8s.io", "images", "ls", f"name=={KVOL_IMAGE}"
            )
            found = [
                line.split()[2]
                for line in listed.stdout.splitlines()[1:]
                if line.split()[:1] == [KVOL_IMAGE]
            ]
            if not found:
                raise SetupFailed(
                    f"{KVOL_IMAGE} is not on node {node}: run KVOL_KIND_OFFLINE=1 "
                    f"hack/kind-up.sh ({listed.stderr.strip()})"
                )
            digests.update(found)
        if len(digests) != 1:
            raise SetupFailed(
                f"the nodes hold different {KVOL_IMAGE} images ({sorted(digests)}): "
                "run KVOL_KIND_OFFLINE=1 hack/kind-up.sh to load one into all"
            )
        return digests.pop()

    def csi_volumes_of(self, uid: str, node: str) -> list[str]:
        volumes = f"/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~csi"
        listed = self.on_node(node, "ls", "-A", volumes)
        if listed.returncode != 0:
            if "No such file" in listed.stderr:
                return []
            raise AssertionError(f"ls {volumes} on {node} failed: {listed.stderr}")
        return sorted(listed.stdout.split())

    def restart_kubelet(self, node: str) -> None:
        """SIGKILL the kubelet of ``node``; its systemd unit (Restart=always) starts it
        again, as on any kubeadm node."""

        def main_pid() -> int:
            shown = self.on_node(node, "systemctl", "show", "--property=MainPID", "kubelet")
            assert shown.returncode == 0, shown.stderr
            return int(shown.stdout.strip().removeprefix("MainPID="))

        pid = main_pid()
        assert pid > 0, f"no kubelet runs on {node}"
        killed = self.on_node(node, "kill", "-KILL", str(pid))
        assert killed.returncode == 0, killed.stderr
        time.sleep(2)
        wait_for(lambda: main_pid() not in (0, pid), 120, f"the kubelet of {node} to restart")


def read_env(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a file (MinIO's credentials)."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _holds(pid: int, fd: int) -> bool:
    """Whether process ``pid`` has the file of our ``fd`` open (a lock held through it)."""
    ours = os.fstat(fd)
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            theirs = entry.stat()
        except OSError:
            continue
        if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
            return True
    return False


def make_cluster() -> Cluster:
    """The cluster KVOL_E2E_TARGET names."""
    if TARGET not in TARGETS:
        raise SetupFailed(f"KVOL_E2E_TARGET={TARGET!r}: choose one of {', '.join(TARGETS)}")
    return KindCluster() if TARGET == "kind" else Cluster()


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
