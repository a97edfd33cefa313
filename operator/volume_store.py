"""What the operator keeps in a backend's store for each Volume: its name in the
namespace's catalog, the settings the node plugin reads, its retention policy; and the
removal of its data under a Delete reclaim policy."""

from __future__ import annotations

from kvol import errors
from kvol.catalog import Catalog
from kvol.operator.failures import ReconcileError, classify
from kvol.operator.resources import VolumeSpec
from kvol.repo import Repo
from kvol.retention import RetentionPolicy, read_policy, write_policy
from kvol.store import Store
from kvol.volume_settings import VolumeSettings, write_settings

#: Recorded in the catalog entries the operator writes: the only ones it adopts.
CATALOG_OWNER = "kvol-operator"


def retained_id(store: Store, namespace: str, name: str) -> str | None:
    """A volume of this name kept by a Retain policy is adopted, not replaced; a name
    the operator did not write is never adopted (its volume is someone else's, which
    a Delete policy would destroy)."""
    try:
        entry = Catalog.for_namespace(store, namespace).entry(name)
    except errors.NotFound:
        return None
    except errors.KvolError as exc:
        raise ReconcileError("BackendUnreachable", str(exc), retry=classify(exc)) from exc
    if entry.owner != CATALOG_OWNER:
        raise ReconcileError(
            "NameTaken",
            f"the backend's catalog already has a volume named {namespace}/{name} "
            f"({entry.volume_id}) that the operator did not create; it is not adopted: "
            "remove that name from the store or give this Volume another name",
            retry=False,
        )
    return entry.volume_id


def write_volume_settings(store: Store, volume_id: str, spec: VolumeSpec) -> None:
    """What the node plugin reads at publish (it has no API access): a change reaches
    the pods that mount the volume after it."""
    settings = VolumeSettings(autocommit_seconds=float(spec.autocommit_interval_seconds))
    try:
        write_settings(store, volume_id, settings)
    except errors.KvolError as exc:
        raise ReconcileError("BackendUnreachable", str(exc), retry=classify(exc)) from exc


def write_retention(store: Store, volume_id: str, spec: VolumeSpec) -> None:
    """spec.retention is the volume's policy: set, changed, or cleared with it. Written
    only when it differs, so a resumed operator rewrites nothing."""
    wanted = spec.retention_policy
    try:
        try:
            current: RetentionPolicy | None = read_policy(store, volume_id)
        except errors.CorruptData:
            current = None  # an unreadable policy is replaced whole
        if current != wanted:
            write_policy(store, volume_id, wanted)
    except errors.KvolError as exc:
        raise ReconcileError("BackendUnreachable", str(exc), retry=classify(exc)) from exc


def create_in_store(
    store: Store, namespace: str, name: str, spec: VolumeSpec, volume_id: str
) -> None:
    try:
        Catalog.for_namespace(store, namespace).create(
            name,
            version=spec.version,
            limits=spec.limits,
            volume_id=volume_id,
            allow_existing=True,
            owner=CATALOG_OWNER,
        )
    except errors.AlreadyExists as exc:
        raise ReconcileError(
            "NameTaken",
            f"the backend's catalog maps {namespace}/{name} to another volume than "
            f"{volume_id}: {exc}",
            retry=False,
        ) from exc
    except errors.InvalidArgument as exc:  # VersionMismatch among them
        raise ReconcileError("InvalidSpec", str(exc), retry=False) from exc
    except errors.KvolError as exc:
        raise ReconcileError("BackendUnreachable", str(exc), retry=classify(exc)) from exc


def destroy(store: Store, namespace: str, name: str, volume_id: str) -> None:
    """Remove the Volume's name from the namespace's catalog, and with it the data unless
    another name still refers to it."""
    catalog = Catalog.for_namespace(store, namespace)
    try:
        try:
            named = catalog.entry(name).volume_id
        except errors.NotFound:
            named = None
        if named == volume_id:
            catalog.delete(name, allow_missing=True)
        elif not catalog.names_of(volume_id):
            # The name was never written, or points elsewhere: remove our data, unless
            # another name still refers to it (a name an older operator wrote in the
            # CLI's scope for namespace main: its user still reads the volume there).
            Repo(store, volume_id).destroy()
    except errors.KvolError as exc:
        raise ReconcileError(
            "BackendUnreachable", f"removing volume {volume_id}: {exc}", retry=True
        ) from exc
