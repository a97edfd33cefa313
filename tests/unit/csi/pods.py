"""Publishing and unpublishing a pod's volume as the kubelet asks for it, in tests."""

from __future__ import annotations

import secrets
from pathlib import Path

from kvol.csi.node import NodeService
from kvol.csi.proto import csi_pb2

MODE = csi_pb2.VolumeCapability.AccessMode.Mode


def publish(
    node: NodeService, tmp_path: Path, namespace: str, volume: str = "data", group: str = ""
) -> Path:
    """Publish ``volume`` of ``namespace`` for a new pod (with a mount ``group``, if
    given) at a target path laid out as the kubelet's; returns it."""
    uid = secrets.token_hex(6)
    target = tmp_path / "pods" / uid / "volumes" / "kubernetes.io~csi" / volume / "mount"
    target.parent.mkdir(parents=True)
    node.NodePublishVolume(
        csi_pb2.NodePublishVolumeRequest(
            volume_id=f"csi-{uid}",
            target_path=str(target),
            volume_capability=csi_pb2.VolumeCapability(
                mount=csi_pb2.VolumeCapability.MountVolume(volume_mount_group=group),
                access_mode=csi_pb2.VolumeCapability.AccessMode(mode=MODE.MULTI_NODE_MULTI_WRITER),
            ),
            volume_context={
                "volume": volume,
                "csi.storage.k8s.io/pod.namespace": namespace,
                "csi.storage.k8s.io/pod.name": f"pod-{uid}",
                "csi.storage.k8s.io/pod.uid": uid,
            },
        )
    )
    return target


def unpublish(node: NodeService, target: Path) -> None:
    """The pod of ``target`` (from :func:`publish`) ended."""
    node.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=f"csi-{target.parts[-5]}", target_path=str(target)
        )
    )
