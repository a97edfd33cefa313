"""What a publication records of the pod it serves, and reading it back.

The kubelet names the pod in volume_context (the CSIDriver sets podInfoOnMount) and hands
over the pod's fsGroup as the mount group. A publication keeps both in its ``extra``, so a
restarted plugin still knows which pod a copy serves and which group may write to it.
"""

from __future__ import annotations

import re

from kvol.csi.events import PodRef
from kvol.csi.proto import csi_pb2
from kvol.csi.state import Publication
from kvol.errors import InvalidArgument

#: Keys the kubelet adds to volume_context when the CSIDriver sets podInfoOnMount.
POD_NAMESPACE = "csi.storage.k8s.io/pod.namespace"
POD_NAME = "csi.storage.k8s.io/pod.name"
POD_UID = "csi.storage.k8s.io/pod.uid"
EPHEMERAL = "csi.storage.k8s.io/ephemeral"
#: Where a publication records its mount group (the pod's fsGroup, from the kubelet).
EXTRA_MOUNT_GROUP = "mountGroup"

_POD_DIR = re.compile(r"/pods/([^/]+)/volumes/")


def pod_extra(context: dict[str, str]) -> dict[str, str]:
    """What a publication records of its pod: the uid (its connection budget) and the
    name (events posted on it when its final commit waits)."""
    keys = {"pod": POD_UID, "podName": POD_NAME}
    return {key: context[field] for key, field in keys.items() if context.get(field)}


def pod_of(pub: Publication) -> str:
    """Which pod a publication serves: its uid, as the kubelet gave it or as its target
    path (``.../pods/<uid>/volumes/...``) names it; else the target path alone."""
    if pub.extra.get("pod"):
        return pub.extra["pod"]
    found = _POD_DIR.search(pub.target_path)
    return found.group(1) if found else pub.target_path


def pod_ref(pub: Publication) -> PodRef:
    """The pod a publication serves, as far as its record knows it (no name: recorded
    by an older version, and then no event can name the pod)."""
    return PodRef(pub.namespace, pub.extra.get("podName", ""), pub.extra.get("pod", ""))


def mount_group_extra(capability: csi_pb2.VolumeCapability) -> dict[str, str]:
    """The mount group the kubelet asks for (the pod's fsGroup), checked."""
    group = capability.mount.volume_mount_group if capability.HasField("mount") else ""
    if not group:
        return {}
    if not group.isascii() or not group.isdigit() or int(group) > 0xFFFFFFFE:
        raise InvalidArgument(f"volume_mount_group must be a numeric group id, not {group!r}")
    return {EXTRA_MOUNT_GROUP: str(int(group))}


def mount_group(pub: Publication) -> int | None:
    """The group whose members may write a publication's view (overlay layout only: a
    plain copy keeps the committed modes, owned by root)."""
    group = pub.extra.get(EXTRA_MOUNT_GROUP)
    return int(group) if group and pub.layout == "overlay" else None
