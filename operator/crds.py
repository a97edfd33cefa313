"""The CustomResourceDefinitions of Volume and VolumeBackend: the one source of both.

``manifests/crds/`` holds these rendered as YAML; a test keeps the two equal. Render with
``kvol-operator crds`` (to stdout) or ``kvol-operator crds --write manifests/crds``.

The schemas do the validation the API server can do, so bad YAML is refused at
``kubectl apply`` with a message naming the field, instead of failing later in the
operator: types, enums, ranges, patterns, and CEL rules for what must not change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from kvol.operator.resources import (
    ACCESS_MODES,
    BACKENDS,
    DEFAULT_AUTOCOMMIT_SECONDS,
    DEFAULT_RECLAIM_POLICY,
    DEFAULT_SIZE,
    DEFAULT_VERSION,
    GROUP,
    VERSION,
    VOLUMES,
)

Schema = dict[str, Any]

#: `kubectl get kvol-all` lists every kvol resource.
CATEGORY = "kvol-all"
#: Longest Volume name: a catalog name in the store (kvol.catalog.NAME_RE), and the value
#: of the kvol.dev/volume label on the PersistentVolume and claim (a label value).
MAX_VOLUME_NAME = 63

_QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
#: A duration as kvol.retention.parse_duration reads it: seconds, or s, m, h, d or w.
_DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?[smhdw]?$"
_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _byte_count(description: str) -> Schema:
    # A structural schema allows int-or-string only as this exact anyOf; the range and
    # the quantity syntax are checked by a CEL rule instead.
    return {
        "description": description,
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-validations": [
            {
                # CEL strings take no "\." escape: the same pattern with "[.]".
                "rule": "type(self) == int ? self >= 1 : self.matches('"
                + _QUANTITY_PATTERN.replace("\\.", "[.]")
                + "')",
                "message": "must be a positive byte count like 1073741824 or a quantity like 1Gi",
            }
        ],
    }


def _count(description: str) -> Schema:
    return {"type": "integer", "format": "int64", "minimum": 1, "description": description}


def _conditions() -> Schema:
    return {
        "type": "array",
        "description": "Latest observations of the object's state.",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status"],
            "properties": {
                "type": {"type": "string", "maxLength": 316},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "reason": {"type": "string", "maxLength": 1024},
                "message": {"type": "string", "maxLength": 32768},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            },
        },
    }


def _retention_status() -> Schema:
    def count(description: str) -> Schema:
        return {"type": "integer", "format": "int64", "minimum": 0, "description": description}

    return {
        "type": "object",
        "description": "The operator's last retention pass over the volume (every prune "
        "interval, and at once when spec.retention changes).",
        "properties": {
            "policy": {"type": "string", "description": "The policy applied, for people."},
            "horizon": count(
                "Where retained history begins: the oldest commit kept (0: nothing pruned)."
            ),
            "lastRun": {
                "type": "string",
                "format": "date-time",
                "description": "When the pass ran: prune and garbage collection with a policy, "
                "measurement alone without.",
            },
            "prunedCommits": count("Commits that pass deleted (outside the policy for a grace)."),
            "waitingCommits": count(
                "Commits before the horizon still stored: a later pass deletes them once "
                "their grace has passed."
            ),
            "bytesFreed": count("Bytes of content that pass deleted."),
            "headBytes": count("Bytes of content the head refers to."),
            "storedBytes": count(
                "Bytes of content stored for the volume; above headBytes by the history kept."
            ),
            "error": {"type": "string", "description": "Why the last pass failed, if it did."},
        },
    }


def _crd(
    *,
    kind: str,
    plural: str,
    scope: str,
    short_names: list[str],
    spec: Schema,
    status: Schema,
    columns: list[dict[str, Any]],
    description: str,
    validations: list[Schema] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "kvol", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                # Not "kvol": kubectl expands a category before a short name, so a category
                # called kvol would make `kubectl get kvol` list VolumeBackends too.
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            **({"x-kubernetes-validations": validations} if validations else {}),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def volume_crd() -> dict[str, Any]:
    spec: Schema = {
        "type": "object",
        "description": "What the volume should be.",
        "properties": {
            "version": {
                "type": "integer",
                "enum": [1, 2],
                "default": DEFAULT_VERSION,
                "description": "Volume format: 1 (500,000 files at most) or 2 (no file count limit).",
            },
            "backend": {
                "type": "string",
                "maxLength": 253,
                "pattern": _NAME_PATTERN,
                "description": "Name of the VolumeBackend holding the data; the default backend when empty.",
            },
            "limits": {
                "type": "object",
                "description": "Limits enforced at commit, on top of those of the version.",
                "properties": {
                    "maxFiles": _count("Most files the volume may hold."),
                    "maxBytes": _byte_count("Most bytes of file content (1073741824 or 1Gi)."),
                    "maxFilesPerDirectory": _count("Most entries in one directory."),
                    "maxFileSize": _byte_count("Largest single file (bytes or a quantity)."),
                },
            },
            "reclaimPolicy": {
                "type": "string",
                "enum": ["Retain", "Delete"],
                "default": DEFAULT_RECLAIM_POLICY,
                "description": "On deletion: Retain keeps the data in the backend; Delete removes "
                "it once no pod has the volume mounted.",
            },
            "autocommitIntervalSeconds": {
                "type": "integer",
                "minimum": 0,
                "maximum": 86400,
                "default": DEFAULT_AUTOCOMMIT_SECONDS,
                "description": "Seconds between background commits of each pod's changes; 0 turns them off.",
            },
            "accessModes": {
                "type": "array",
                "description": "Access modes of the PersistentVolumeClaim made for the volume.",
                "minItems": 1,
                "default": ["ReadWriteMany"],
                "items": {"type": "string", "enum": list(ACCESS_MODES)},
                "x-kubernetes-list-type": "set",
            },
            "size": {
                "type": "string",
                "pattern": _QUANTITY_PATTERN,
                "default": DEFAULT_SIZE,
                "description": "Capacity shown on the PersistentVolume and its claim; kvol enforces "
                "limits, not this.",
            },
            "retention": {
                "type": "object",
                "description": "Which commits the volume keeps: the last keepLast and/or those "
                "newer than keepFor (a commit either keeps is kept; the head always is). The "
                "operator prunes the others, and garbage-collects what only they referred to, "
                "on its prune schedule. Absent or empty: every commit is kept.",
                "properties": {
                    "keepLast": _count("Keep the newest this many commits."),
                    "keepFor": {
                        "type": "string",
                        "maxLength": 32,
                        "pattern": _DURATION_PATTERN,
                        "description": "Keep commits newer than this: seconds, or a number "
                        "with s, m, h, d or w (30d).",
                    },
                },
            },
        },
        "x-kubernetes-validations": [
            {
                "rule": "self.version == oldSelf.version",
                "message": "spec.version is immutable: create a new Volume to change it",
            },
            {
                "rule": "has(self.limits) == has(oldSelf.limits) && "
                "(!has(self.limits) || self.limits == oldSelf.limits)",
                "message": "spec.limits is immutable: they are fixed in the volume's metadata "
                "when it is created",
            },
            {
                "rule": "has(self.backend) == has(oldSelf.backend) && "
                "(!has(self.backend) || self.backend == oldSelf.backend)",
                "message": "spec.backend is immutable: the data lives in that backend",
            },
        ],
    }
    status: Schema = {
        "type": "object",
        "description": "What the operator last observed.",
        "properties": {
            "phase": {"type": "string", "enum": ["Pending", "Ready", "Failed", "Terminating"]},
            "volumeId": {"type": "string", "description": "The volume's id in its backend."},
            "backend": {"type": "string", "description": "The backend actually used."},
            "claimName": {"type": "string"},
            "persistentVolumeName": {"type": "string"},
            "files": {"type": "integer", "format": "int64"},
            "bytes": {"type": "integer", "format": "int64"},
            "size": {"type": "string", "description": "bytes, for people."},
            "headSeq": {"type": "integer", "format": "int64"},
            "lastCommitTime": {"type": "string", "format": "date-time"},
            "writers": {
                "type": "integer",
                "description": "Writers that committed in the last five minutes: pods (one "
                "each, whatever number of mounts), and working copies outside the cluster.",
            },
            "pods": {
                "type": "array",
                "description": "Pods that committed in the last five minutes, newest first "
                "(at most 50): the commit each made last, and the commit its copy was based "
                "on after it (a reload since then is not shown).",
                "maxItems": 50,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "lastCommit": {"type": "integer", "format": "int64"},
                        "baseSeq": {"type": "integer", "format": "int64"},
                        "lastCommitTime": {"type": "string", "format": "date-time"},
                    },
                },
            },
            "retention": _retention_status(),
            "observedGeneration": {"type": "integer", "format": "int64"},
            "message": {"type": "string"},
            "conditions": _conditions(),
        },
    }
    columns: list[dict[str, Any]] = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Files", "type": "integer", "jsonPath": ".status.files"},
        {"name": "Size", "type": "string", "jsonPath": ".status.size"},
        {"name": "Head", "type": "integer", "jsonPath": ".status.headSeq"},
        {"name": "Writers", "type": "integer", "jsonPath": ".status.writers"},
        {"name": "Backend", "type": "string", "jsonPath": ".status.backend", "priority": 1},
        {"name": "Volume-ID", "type": "string", "jsonPath": ".status.volumeId", "priority": 1},
        {"name": "Reclaim", "type": "string", "jsonPath": ".spec.reclaimPolicy", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(
        kind="Volume",
        plural=VOLUMES,
        scope="Namespaced",
        short_names=["kvol", "kvols"],
        spec=spec,
        status=status,
        columns=columns,
        description="A named, persistent volume that many pods mount at once (kvol).",
        validations=[
            {
                "rule": f"size(self.metadata.name) <= {MAX_VOLUME_NAME}",
                "message": f"metadata.name must be at most {MAX_VOLUME_NAME} characters: it "
                "is the volume's name in the store's catalog and a label value on its "
                "PersistentVolume and claim",
            }
        ],
    )


def volume_backend_crd() -> dict[str, Any]:
    secret_ref: Schema = {
        "type": "object",
        "description": "Secret with accessKeyId and secretAccessKey (and optionally sessionToken).",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "maxLength": 253, "pattern": _NAME_PATTERN},
            "namespace": {
                "type": "string",
                "maxLength": 63,
                "description": "Defaults to the operator's namespace.",
            },
        },
    }
    spec: Schema = {
        "type": "object",
        "description": "Where volumes' data lives.",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "enum": ["filesystem", "s3"]},
            "default": {
                "type": "boolean",
                "default": False,
                "description": "Volumes that name no backend use the default one.",
            },
            "filesystem": {
                "type": "object",
                "description": "A directory every node and the operator see at the same path "
                "(local disk for one node, NFS or hostPath otherwise).",
                "required": ["path"],
                "properties": {
                    "path": {"type": "string", "pattern": "^/", "maxLength": 4096},
                },
            },
            "s3": {
                "type": "object",
                "description": "An S3-compatible object store.",
                "required": ["bucket"],
                "properties": {
                    "bucket": {
                        "type": "string",
                        "minLength": 3,
                        "maxLength": 63,
                        "pattern": r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$",
                    },
                    "prefix": {"type": "string", "maxLength": 512},
                    "endpoint": {
                        "type": "string",
                        "pattern": "^https?://",
                        "description": "For stores other than AWS (MinIO, Ceph RGW, ...).",
                    },
                    "region": {"type": "string"},
                    "pathStyle": {
                        "type": "boolean",
                        "description": "https://host/bucket/key requests; the default when an "
                        "endpoint is set.",
                    },
                    "credentialsSecretRef": secret_ref,
                },
            },
        },
        "x-kubernetes-validations": [
            {
                "rule": "self.type == 'filesystem' ? (has(self.filesystem) && !has(self.s3)) "
                ": (has(self.s3) && !has(self.filesystem))",
                "message": "set exactly the block matching spec.type: filesystem or s3",
            },
        ],
    }
    status: Schema = {
        "type": "object",
        "properties": {
            "phase": {"type": "string", "enum": ["Ready", "Unreachable", "Invalid"]},
            "url": {"type": "string", "description": "Where the data is (no credentials)."},
            "volumes": {"type": "integer", "description": "Volumes using this backend."},
            "observedGeneration": {"type": "integer", "format": "int64"},
            "message": {"type": "string"},
            "conditions": _conditions(),
        },
    }
    columns: list[dict[str, Any]] = [
        {"name": "Type", "type": "string", "jsonPath": ".spec.type"},
        {"name": "Default", "type": "boolean", "jsonPath": ".spec.default"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Volumes", "type": "integer", "jsonPath": ".status.volumes"},
        {"name": "URL", "type": "string", "jsonPath": ".status.url", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(
        kind="VolumeBackend",
        plural=BACKENDS,
        scope="Cluster",
        short_names=["kvb"],
        spec=spec,
        status=status,
        columns=columns,
        description="A store that holds kvol volumes: a directory or an S3 bucket.",
    )


def all_crds() -> list[dict[str, Any]]:
    return [volume_crd(), volume_backend_crd()]


def file_name(crd: dict[str, Any]) -> str:
    return f"{crd['metadata']['name']}.yaml"


def render(crd: dict[str, Any]) -> str:
    header = "# Generated by `kvol-operator crds --write manifests/crds`; do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for crd in all_crds():
        path = directory / file_name(crd)
        path.write_text(render(crd))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvol-operator crds",
        description="Print the CustomResourceDefinitions of kvol as YAML, or write one file each.",
    )
    parser.add_argument(
        "--write", metavar="DIR", type=Path, help="write <plural>.kvol.dev.yaml files into DIR"
    )
    args = parser.parse_args(argv)
    if args.write:
        for path in write(args.write):
            print(path)
    else:
        sys.stdout.write("---\n".join(render(crd) for crd in all_crds()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
