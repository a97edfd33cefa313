"""Pods under the ``restricted`` Pod Security Standard (non-root, no capabilities, their
fsGroup handed to the plugin as the CSI mount group) create, edit and delete files in
their kvol volume, inline and by claim; their commits keep the modes they set; and
``kvol volume ls -n`` reads the same volume from the store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import Cluster, pod, unique, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

KVOL = str(Path(sys.executable).with_name("kvol"))
USER = 1000


def restricted(spec: dict[str, Any], *, fs_group: bool = True) -> dict[str, Any]:
    """``spec`` (a pod) as the restricted Pod Security Standard admits it."""
    spec["spec"]["securityContext"] = {
        "runAsUser": USER,
        "runAsGroup": USER,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
        **({"fsGroup": USER} if fs_group else {}),
    }
    for container in spec["spec"]["containers"]:
        container["securityContext"] = {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }
    return spec


def run_to_completion(cluster: Cluster, namespace: str, *pods: dict[str, Any]) -> list[str]:
    """Run ``pods`` at once until each succeeds; their logs; then delete them and wait
    until each is torn down (its volume unpublished, so committed)."""
    cluster.apply(*pods, namespace=namespace)
    names = [str(p["metadata"]["name"]) for p in pods]
    for name in names:
        cluster.wait_pod_phase(namespace, name, ("Succeeded",))
    logs = [cluster.logs(namespace, name) for name in names]
    for name in names:
        cluster.delete_pod(namespace, name)
    return logs


def test_restricted_pods_create_edit_and_delete_files(cluster: Cluster, namespace: str) -> None:
    vol = unique("vol")
    cluster.create_volume(namespace, vol)
    wait_for(lambda: cluster.get("pvc", vol, namespace), 60, f"the claim of Volume {vol}")
    # Files committed by a root pod, before the namespace is restricted.
    seed = "echo old > /data/old.txt && echo gone > /data/gone.txt && mkdir /data/shared"
    run_to_completion(cluster, namespace, pod("seed", seed, inline=vol))
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )

    inline = (
        "id -u; echo new > /data/new.txt && chmod 600 /data/new.txt"
        " && echo more >> /data/old.txt && rm /data/gone.txt"
        " && mkdir /data/made && echo deep > /data/made/deep.txt"
    )
    claim = "echo claim > /data/shared/claim.txt"
    logs = run_to_completion(
        cluster,
        namespace,
        restricted(pod("writer-inline", inline, inline=vol)),
        restricted(pod("writer-claim", claim, claim=vol)),
    )
    assert logs[0].split() == [str(USER)]

    # A reader with no fsGroup sees the files as committed: the modes the writer set, and
    # old.txt's own (the group-write bit the writer's view showed is not published).
    (out,) = run_to_completion(
        cluster,
        namespace,
        restricted(
            pod(
                "reader",
                "ls /data; stat -c '%a %n' /data/new.txt /data/made/deep.txt /data/old.txt;"
                " cat /data/old.txt /data/shared/claim.txt",
                inline=vol,
            ),
            fs_group=False,
        ),
    )
    assert out.split() == [
        *("made", "new.txt", "old.txt", "shared"),
        *("600", "/data/new.txt", "644", "/data/made/deep.txt", "644", "/data/old.txt"),
        *("old", "more", "claim"),
    ]

    # The CLI reaches the same volume in the same store by the pods' namespace.
    store = cluster.store
    listed = subprocess.run(
        [KVOL, "--store", f"file://{store}", "volume", "ls", "-n", namespace, vol, "/", "-r"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == [
        "made/",
        "made/deep.txt",
        "new.txt",
        "old.txt",
        "shared/",
        "shared/claim.txt",
    ]
    missing = subprocess.run(
        [KVOL, "--store", f"file://{store}", "volume", "ls", vol, "/", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 3 and "not found" in missing.stderr, missing.stderr
    assert (
        json.loads(
            subprocess.run(
                [KVOL, "--store", f"file://{store}", "volume", "list", "-n", namespace, "--json"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
        )[0]["name"]
        == vol
    )
