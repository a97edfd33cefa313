"""The node plugin as the kubelet sees it: a real ``kvol-csi`` process on a unix socket,
and a client that publishes volumes for pods the way the kubelet does."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from kvol.csi.proto import csi_pb2, csi_pb2_grpc
from kvol.mounting import mounts_under, umount
from kvol.repo import Repo
from tests.tools import stop_process

REPO = Path(__file__).resolve().parents[3]
MODE = csi_pb2.VolumeCapability.AccessMode


@dataclass
class Plugin:
    """One ``kvol-csi`` process; restartable over the same state directory."""

    workdir: Path
    store_url: str
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "csi.sock"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def log_path(self) -> Path:
        return self.workdir / "plugin.log"

    def start(self, timeout: float = 30.0) -> None:
        assert self.process is None
        env = {**os.environ, "PYTHONSAFEPATH": "1", **self.env}
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps it)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kvol.csi.main",
                f"--endpoint=unix://{self.socket}",
                f"--state-dir={self.state_dir}",
                f"--store={self.store_url}",
                "--node-id=node-1",
                "--log-level=DEBUG",
                *self.extra_args,
            ],
            env=env,
            cwd="/",
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"kvol-csi exited: {self.log_path.read_text()}")
            if self.socket.exists():
                try:
                    ready = self.identity.Probe(csi_pb2.ProbeRequest(), timeout=2).ready.value
                    if ready:
                        return
                except grpc.RpcError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kvol-csi not ready: {self.log_path.read_text()}")
            time.sleep(0.05)

    def _channel(self) -> grpc.Channel:
        if self.channel is None:
            self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        return self.channel

    @property
    def identity(self) -> csi_pb2_grpc.IdentityStub:
        return csi_pb2_grpc.IdentityStub(self._channel())

    @property
    def node(self) -> csi_pb2_grpc.NodeStub:
        return csi_pb2_grpc.NodeStub(self._channel())

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        self._stop(signal.SIGKILL)

    def stop(self) -> None:
        self._stop(signal.SIGTERM)

    def _stop(self, sig: signal.Signals) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.process is None:
            return
        stop_process(self.process, sig)
        self.process = None


@dataclass
class Pod:
    uid: str
    namespace: str
    name: str
    target: Path
    volume_id: str


class Kubelet:
    """Publishes and unpublishes volumes the way the kubelet does for inline CSI volumes."""

    def __init__(self, plugin: Plugin, root: Path) -> None:
        self.plugin = plugin
        self.root = root

    def pod(self, namespace: str, name: str = "", volume: str = "data") -> Pod:
        uid = secrets.token_hex(8)
        target = self.root / "pods" / uid / "volumes" / "kubernetes.io~csi" / volume / "mount"
        # The kubelet makes the parent; the plugin makes (and later removes) the target.
        target.parent.mkdir(parents=True)
        return Pod(uid, namespace, name or f"pod-{uid[:5]}", target, f"csi-{uid}")

    def publish(
        self,
        pod: Pod,
        volume: str = "data",
        *,
        readonly: bool = False,
        attributes: dict[str, str] | None = None,
        mode: int = MODE.MULTI_NODE_MULTI_WRITER,
        timeout: float = 120,
    ) -> csi_pb2.NodePublishVolumeResponse:
        context = {
            "volume": volume,
            "csi.storage.k8s.io/pod.namespace": pod.namespace,
            "csi.storage.k8s.io/pod.name": pod.name,
            "csi.storage.k8s.io/pod.uid": pod.uid,
            "csi.storage.k8s.io/ephemeral": "true",
            **(attributes or {}),
        }
        return self.plugin.node.NodePublishVolume(
            csi_pb2.NodePublishVolumeRequest(
                volume_id=pod.volume_id,
                target_path=str(pod.target),
                volume_capability=csi_pb2.VolumeCapability(
                    mount=csi_pb2.VolumeCapability.MountVolume(),
                    access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode),
                ),
                readonly=readonly,
                volume_context=context,
                secrets={"token": "do-not-log-me"},
            ),
            timeout=timeout,
        )

    def unpublish(self, pod: Pod, timeout: float = 120) -> csi_pb2.NodeUnpublishVolumeResponse:
        return self.plugin.node.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(
                volume_id=pod.volume_id, target_path=str(pod.target)
            ),
            timeout=timeout,
        )

    def stats(self, pod: Pod) -> csi_pb2.NodeGetVolumeStatsResponse:
        return self.plugin.node.NodeGetVolumeStats(
            csi_pb2.NodeGetVolumeStatsRequest(volume_id=pod.volume_id, volume_path=str(pod.target))
        )


def unmount_all(path: Path) -> None:
    """Leave no mount behind a failed test (deepest first, lazily)."""
    for point in mounts_under(path):
        with contextlib.suppress(OSError):
            umount(point, 2)  # MNT_DETACH


def volume_files(repo: Repo) -> dict[str, bytes]:
    """The head of a volume, read from its store: path -> content."""
    reader = repo.reader()
    return {p: reader.read(r) for p, r in repo.state().files.items()}


def publications(plugin: Plugin) -> list[dict[str, object]]:
    """The publications the plugin has recorded in its state file."""
    path = plugin.state_dir / "state.json"
    if not path.exists():
        return []
    pubs: list[dict[str, object]] = json.loads(path.read_text())["publications"]
    return pubs
