"""A real control plane on loopback: etcd and kube-apiserver, and the operator as a process.

Plain Python (no pytest) so the benchmarks start the same things the tests do. The
binaries come from hack/install-etcd.sh and hack/install-kube.sh.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.tools import free_port, run_kubectl

REPO = Path(__file__).resolve().parents[3]
T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            last = check()
            error = None
        except ProcessExited:
            raise
        except Exception as exc:  # report it if it is still failing at the deadline
            error = exc
            last = None
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last: {last!r}; {error!r}")


class ProcessExited(RuntimeError):
    """A child process that should be running is gone: waiting longer cannot help."""


class Process:
    """A child process whose output goes to a log file, stopped politely then firmly."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.popen is None or self.popen.poll() is not None, f"{self.name} is running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            code = None if self.popen is None else self.popen.returncode
            raise ProcessExited(f"{self.name} exited ({code}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def _http_ok(url: str, *, token: str | None = None, context: ssl.SSLContext | None = None) -> bool:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
        return False


@contextmanager
def start_etcd(etcd: str, directory: Path) -> Iterator[str]:
    """etcd on loopback with its data in ``directory``; yields its client URL."""
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    proc = Process(
        "etcd",
        [
            etcd,
            "--name=kvol-test",
            f"--data-dir={directory / 'data'}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=kvol-test=http://127.0.0.1:{peer}",
            # Test data: losing it in a power cut costs nothing, and fsync costs a lot.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        directory / "etcd.log",
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    proc.start()
    try:
        wait_for(lambda: proc.check_alive() or _http_ok(f"{url}/health"), 30, "etcd to be healthy")
        yield url
    finally:
        proc.stop()


@dataclass
class Cluster:
    """A kube-apiserver reached as a cluster admin through ``kubeconfig``."""

    server: str
    token: str
    ca_file: Path
    kubeconfig: Path
    kubectl_binary: str
    directory: Path
    _api: Any = field(default=None, repr=False)

    def apply(
        self, text: str, namespace: str | None = None, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl apply`` of the YAML ``text`` (in ``namespace``, if given)."""
        where = ("-n", namespace) if namespace else ()
        return self.kubectl("apply", *where, "-f", "-", input=text, check=check)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return run_kubectl(
            [self.kubectl_binary, f"--kubeconfig={self.kubeconfig}"],
            args,
            input=input,
            check=check,
            timeout=timeout,
        )

    def get_json(self, *args: str) -> Any:
        """``kubectl get ARGS -o json`` decoded; None when the object does not exist."""
        result = self.kubectl("get", *args, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            raise AssertionError(f"kubectl get {' '.join(args)}: {result.stderr}")
        return json.loads(result.stdout)

    def request(self, path: str) -> Any:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        req = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10, context=context) as response:
            return json.loads(response.read())

    def kubeconfig_for(self, token: str, path: Path) -> Path:
        """A kubeconfig for this cluster that authenticates with ``token``."""
        _write_kubeconfig(path, self.server, self.ca_file, token)
        return path

    @property
    def api(self) -> Any:
        """A kubernetes.client.ApiClient for this cluster."""
        if self._api is None:
            import kubernetes

            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_kube_config(
                config_file=str(self.kubeconfig), client_configuration=configuration
            )
            self._api = kubernetes.client.ApiClient(configuration)
        return self._api


def _write_kubeconfig(path: Path, server: str, ca_file: Path, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kvol-test",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [
            {
                "name": "kvol-test",
                "context": {"cluster": "kvol-test", "user": "admin", "namespace": "default"},
            }
        ],
        "current-context": "kvol-test",
    }
    path.write_text(json.dumps(config, indent=2))


@contextmanager
def start_apiserver(
    apiserver: str, kubectl: str, etcd_url: str, directory: Path
) -> Iterator[Cluster]:
    """kube-apiserver on loopback over ``etcd_url``, with an admin token in a kubeconfig."""
    directory.mkdir(parents=True, exist_ok=True)
    certs = directory / "certs"
    certs.mkdir(exist_ok=True)
    sa_key = directory / "sa.key"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True
    )
    token = secrets.token_hex(16)
    tokens = directory / "tokens.csv"
    tokens.write_text(f'{token},kvol-admin,kvol-admin,"system:masters"\n')
    port = free_port()
    server = f"https://127.0.0.1:{port}"
    proc = Process(
        "kube-apiserver",
        [
            apiserver,
            f"--etcd-servers={etcd_url}",
            f"--etcd-prefix=/kvol-{secrets.token_hex(4)}",
            f"--cert-dir={certs}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={sa_key}",
            f"--service-account-signing-key-file={sa_key}",
            "--authorization-mode=RBAC",
            # As in every real cluster: the node plugin's DaemonSet runs privileged.
            "--allow-privileged=true",
            f"--token-auth-file={tokens}",
            # No controller-manager creates service accounts here; pods need none.
            "--disable-admission-plugins=ServiceAccount",
            # Fewer background loops on a small machine.
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--v=1",
        ],
        directory / "kube-apiserver.log",
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    proc.start()
    try:
        ca_file = certs / "apiserver.crt"
        wait_for(
            lambda: proc.check_alive() or ca_file.exists(), 60, "kube-apiserver's serving cert"
        )
        context = ssl.create_default_context(cafile=str(ca_file))
        wait_for(
            lambda: (
                proc.check_alive() or _http_ok(f"{server}/readyz", token=token, context=context)
            ),
            120,
            "kube-apiserver /readyz",
            interval=0.2,
        )
        kubeconfig = directory / "kubeconfig"
        _write_kubeconfig(kubeconfig, server, ca_file, token)
        yield Cluster(server, token, ca_file, kubeconfig, kubectl, directory)
    finally:
        proc.stop()


@contextmanager
def start_control_plane(
    etcd: str, apiserver: str, kubectl: str, directory: Path
) -> Iterator[Cluster]:
    with ExitStack() as stack:
        etcd_url = stack.enter_context(start_etcd(etcd, directory / "etcd"))
        yield stack.enter_context(
            start_apiserver(apiserver, kubectl, etcd_url, directory / "apiserver")
        )


def install_crds(cluster: Cluster) -> None:
    crds = REPO / "manifests" / "crds"
    cluster.kubectl(
        "apply",
        "-f",
        str(crds / "volumes.kvol.dev.yaml"),
        "-f",
        str(crds / "volumebackends.kvol.dev.yaml"),
    )
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/volumes.kvol.dev",
        "crd/volumebackends.kvol.dev",
    )


class Operator(Process):
    """``kvol-operator run`` as a child process against a cluster."""

    def __init__(
        self,
        cluster: Cluster,
        directory: Path,
        *,
        status_interval: float = 1.0,
        kubeconfig: Path | None = None,
        kubeconfig_env: bool = True,
        **flags: str,
    ) -> None:
        kubeconfig = kubeconfig or cluster.kubeconfig
        # Short leases: a test that kills an operator waits this long for the next one.
        flags = {
            "leader_elect_lease_duration": "4",
            "leader_elect_renew_deadline": "3",
            "leader_elect_retry_period": "0.5",
            **flags,
        }
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        argv = [
            sys.executable,
            "-m",
            "kvol.operator",
            "run",
            f"--kubeconfig={kubeconfig}",
            f"--status-interval={status_interval}",
            "--max-backoff=5",
            f"--metrics-port={self.metrics_port}",
            f"--liveness-port={self.liveness_port}",
            "--bind-address=127.0.0.1",
            "--operator-namespace=kvol-system",
            "--log-format=plain",
            *(f"--{k.replace('_', '-')}={v}" for k, v in flags.items()),
        ]
        env = {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("KUBECONFIG", None)
        if kubeconfig_env:
            env["KUBECONFIG"] = str(kubeconfig)
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__("kvol-operator", argv, directory / "operator.log", env)

    @contextmanager
    def running(self) -> Iterator[Operator]:
        """Started for the ``with`` block, then stopped; its log's tail is printed (pytest
        shows it when the test failed)."""
        self.start()
        try:
            yield self
        finally:
            self.stop()
            print(f"--- operator log ---\n{self.log_tail(200)}")

    def start(self, timeout: float = 60.0) -> None:
        super().start()
        wait_for(
            lambda: self.check_alive() or _http_ok(self.liveness_url),
            timeout,
            "the operator's liveness endpoint",
            interval=0.1,
        )

    @property
    def liveness_url(self) -> str:
        return f"http://127.0.0.1:{self.liveness_port}/healthz"

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
            return text

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")
