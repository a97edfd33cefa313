"""The operator's resources as typed values: names, and specs parsed from raw objects.

The API server has already checked a spec against the CRD schema (crds.py); parsing here
applies defaults for objects written before a default existed and turns what the schema
cannot express into :class:`kvol.errors.InvalidArgument`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kvol.errors import InvalidArgument
from kvol.model import Limits
from kvol.retention import RetentionPolicy, parse_duration

GROUP = "kvol.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
VOLUMES = "volumes"
BACKENDS = "volumebackends"

#: The CSI driver of the node plugin (csi/).
CSI_DRIVER = "csi.kvol.dev"
#: Our finalizer: a Volume is not gone until its reclaim policy has been carried out.
FINALIZER = "kvol.dev/finalizer"
#: Marks a VolumeBackend as the default, like storageclass.kubernetes.io/is-default-class.
DEFAULT_BACKEND_ANNOTATION = "kvol.dev/default-backend"
#: Labels on the PVs and PVCs the operator creates, so they can be listed and adopted.
VOLUME_LABEL = "kvol.dev/volume"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kvol-operator"}

ReclaimPolicy = Literal["Retain", "Delete"]
Phase = Literal["Pending", "Ready", "Failed", "Terminating"]

DEFAULT_VERSION = 2
DEFAULT_RECLAIM_POLICY: ReclaimPolicy = "Retain"
DEFAULT_AUTOCOMMIT_SECONDS = 5
DEFAULT_ACCESS_MODES = ("ReadWriteMany",)
DEFAULT_SIZE = "1Gi"
ACCESS_MODES = ("ReadWriteMany", "ReadOnlyMany", "ReadWriteOnce", "ReadWriteOncePod")

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_SUFFIX = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "Pi": 1 << 50,
    "Ei": 1 << 60,
}


def parse_bytes(value: object, what: str) -> int:
    """A byte count given as an integer or a Kubernetes quantity ("10Gi", "500M")."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what} must be a byte count, not {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and (match := _QUANTITY.match(value.strip())):
        number = int(float(match.group(1)) * _SUFFIX[match.group(2)])
    else:
        raise InvalidArgument(f"{what} must be a byte count like 1073741824 or 1Gi, not {value!r}")
    if number < 1:
        raise InvalidArgument(f"{what} must be at least 1 byte, not {value!r}")
    return number


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{what} must be a positive integer, not {value!r}")
    return value


@dataclass(frozen=True)
class VolumeSpec:
    version: int = DEFAULT_VERSION
    #: Name of a VolumeBackend; empty means the default backend.
    backend: str = ""
    limits: Limits | None = None
    reclaim_policy: ReclaimPolicy = DEFAULT_RECLAIM_POLICY
    autocommit_interval_seconds: int = DEFAULT_AUTOCOMMIT_SECONDS
    access_modes: tuple[str, ...] = DEFAULT_ACCESS_MODES
    size: str = DEFAULT_SIZE
    #: spec.retention; None (absent or empty) keeps every commit.
    retention: RetentionPolicy | None = None

    @property
    def retention_policy(self) -> RetentionPolicy:
        """The policy the volume's store holds: keep everything without spec.retention."""
        return self.retention or RetentionPolicy()

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> VolumeSpec:
        version = spec.get("version", DEFAULT_VERSION)
        if version not in (1, 2) or isinstance(version, bool):
            raise InvalidArgument(f"spec.version must be 1 or 2, not {version!r}")
        backend = spec.get("backend") or ""
        if not isinstance(backend, str):
            raise InvalidArgument(f"spec.backend must be a name, not {backend!r}")
        policy = spec.get("reclaimPolicy", DEFAULT_RECLAIM_POLICY)
        if policy not in ("Retain", "Delete"):
            raise InvalidArgument(f"spec.reclaimPolicy must be Retain or Delete, not {policy!r}")
        interval = spec.get("autocommitIntervalSeconds", DEFAULT_AUTOCOMMIT_SECONDS)
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
            raise InvalidArgument(
                f"spec.autocommitIntervalSeconds must be 0 (off) or more, not {interval!r}"
            )
        modes = tuple(spec.get("accessModes") or DEFAULT_ACCESS_MODES)
        bad = [m for m in modes if m not in ACCESS_MODES]
        if bad:
            raise InvalidArgument(f"spec.accessModes has unknown mode(s) {bad}")
        size = str(spec.get("size") or DEFAULT_SIZE)
        parse_bytes(size, "spec.size")
        return cls(
            version=version,
            backend=backend,
            limits=_parse_limits(spec.get("limits")),
            reclaim_policy=policy,
            autocommit_interval_seconds=interval,
            access_modes=modes,
            size=size,
            retention=_parse_retention(spec.get("retention")),
        )


def _parse_retention(raw: object) -> RetentionPolicy | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidArgument("spec.retention must be an object")
    unknown = set(raw) - {"keepLast", "keepFor"}
    if unknown:
        raise InvalidArgument(f"spec.retention has unknown field(s) {sorted(unknown)}")
    keep_last = raw.get("keepLast")
    if keep_last is not None:
        keep_last = _positive_int(keep_last, "spec.retention.keepLast")
    keep_for = raw.get("keepFor")
    seconds = None
    if keep_for is not None:
        if not isinstance(keep_for, str):
            raise InvalidArgument(
                f"spec.retention.keepFor must be a duration like 7d, not {keep_for!r}"
            )
        try:
            seconds = parse_duration(keep_for)
        except InvalidArgument as exc:
            raise InvalidArgument(f"spec.retention.keepFor: {exc}") from exc
    policy = RetentionPolicy(keep_last=keep_last, keep_for_seconds=seconds)
    return None if policy.keeps_everything else policy


def _parse_limits(raw: object) -> Limits | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidArgument("spec.limits must be an object")
    known = {"maxFiles", "maxBytes", "maxFilesPerDirectory", "maxFileSize"}
    unknown = set(raw) - known
    if unknown:
        raise InvalidArgument(f"spec.limits has unknown field(s) {sorted(unknown)}")
    if not raw:
        return None

    def get(key: str, byte_count: bool) -> int | None:
        value = raw.get(key)
        if value is None:
            return None
        what = f"spec.limits.{key}"
        return parse_bytes(value, what) if byte_count else _positive_int(value, what)

    return Limits(
        max_files=get("maxFiles", False),
        max_bytes=get("maxBytes", True),
        max_files_per_directory=get("maxFilesPerDirectory", False),
        max_file_size=get("maxFileSize", True),
    )


@dataclass(frozen=True)
class SecretRef:
    name: str
    namespace: str | None = None


@dataclass(frozen=True)
class FilesystemBackend:
    path: str


@dataclass(frozen=True)
class S3Backend:
    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    #: None: path style when an endpoint is named, virtual-hosted on AWS itself.
    path_style: bool | None = None
    credentials: SecretRef | None = None


@dataclass(frozen=True)
class BackendSpec:
    type: Literal["filesystem", "s3"]
    filesystem: FilesystemBackend | None = None
    s3: S3Backend | None = None
    default: bool = False

    @classmethod
    def parse(
        cls, spec: Mapping[str, Any], annotations: Mapping[str, str] | None = None
    ) -> BackendSpec:
        kind = spec.get("type")
        has_fs, has_s3 = spec.get("filesystem") is not None, spec.get("s3") is not None
        if kind is None:  # the schema requires it; accept an unambiguous block anyway
            kind = (
                "filesystem" if has_fs and not has_s3 else "s3" if has_s3 and not has_fs else None
            )
        default = is_default(spec, annotations)
        if kind == "filesystem":
            if has_s3:
                raise InvalidArgument("a filesystem backend must not have an s3 block")
            fs = spec.get("filesystem") or {}
            path = fs.get("path")
            if not isinstance(path, str) or not path.startswith("/"):
                raise InvalidArgument(
                    f"spec.filesystem.path must be an absolute path, not {path!r}"
                )
            return cls(type="filesystem", filesystem=FilesystemBackend(path), default=default)
        if kind == "s3":
            if has_fs:
                raise InvalidArgument("an s3 backend must not have a filesystem block")
            return cls(type="s3", s3=_parse_s3(spec.get("s3") or {}), default=default)
        raise InvalidArgument(
            f"spec.type must be filesystem or s3 with the matching block, not {kind!r}"
        )


def is_default(spec: Mapping[str, Any], annotations: Mapping[str, str] | None) -> bool:
    """Marked default by ``spec.default`` or by the annotation."""
    marked = str((annotations or {}).get(DEFAULT_BACKEND_ANNOTATION, "")).lower() == "true"
    return bool(spec.get("default", False)) or marked


def _parse_s3(raw: Mapping[str, Any]) -> S3Backend:
    bucket = raw.get("bucket")
    if not isinstance(bucket, str) or not bucket:
        raise InvalidArgument("spec.s3.bucket is required")
    prefix = str(raw.get("prefix") or "").strip("/")
    endpoint = raw.get("endpoint") or None
    if endpoint is not None and not re.match(r"^https?://[^/]+", str(endpoint)):
        raise InvalidArgument(f"spec.s3.endpoint must be an http(s) URL, not {endpoint!r}")
    ref = raw.get("credentialsSecretRef")
    credentials = None
    if ref:
        if not ref.get("name"):
            raise InvalidArgument("spec.s3.credentialsSecretRef.name is required")
        credentials = SecretRef(str(ref["name"]), ref.get("namespace") or None)
    return S3Backend(
        bucket=bucket,
        prefix=prefix,
        endpoint=endpoint,
        region=raw.get("region") or None,
        path_style=None if raw.get("pathStyle") is None else bool(raw["pathStyle"]),
        credentials=credentials,
    )
