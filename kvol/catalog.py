"""Volume names, kept in the store next to the volumes (DESIGN: names live in a catalog).

A name maps to an opaque volume id under ``catalog/<scope>/<name>``; renaming moves no
data. There are two kinds of scope, and their keys can never meet:

- ``main``: the CLI and the SDK outside a cluster (``catalog/main/<name>``);
- one per Kubernetes namespace, ``catalog/_ns/<namespace>/<name>``, written by the operator
  and read by the node plugin (:meth:`Catalog.for_namespace` is the only way to name one).
  A plain scope starts with a letter or digit, so no namespace, not even one called
  ``main``, can reach the names of non-cluster use, nor they its names.
"""

from __future__ import annotations

import builtins
import json
import re
import time
from dataclasses import dataclass

from kvol.errors import (
    AlreadyExists,
    CorruptData,
    InvalidArgument,
    KvolError,
    NotFound,
    VersionMismatch,
)
from kvol.layout import CATALOG_PREFIX, catalog_key
from kvol.model import VOLUME_ID_RE, Limits, VolumeMeta
from kvol.repo import Repo
from kvol.store import Store

# Kubernetes object names fit this too, so a Volume's name is always a valid catalog name.
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$")
DEFAULT_SCOPE = "main"
#: Scopes of namespaces start with this, which no volume name or plain scope can.
NAMESPACE_SCOPE_PREFIX = "_ns/"


def check_name(name: str, what: str = "volume name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidArgument(
            f"invalid {what} {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def namespace_scope(namespace: str) -> str:
    """The catalog scope of a Kubernetes namespace (never equal to :data:`DEFAULT_SCOPE`)."""
    return NAMESPACE_SCOPE_PREFIX + check_name(namespace, "namespace")


def _check_scope(scope: str) -> str:
    if scope == DEFAULT_SCOPE:
        return scope
    if isinstance(scope, str) and scope.startswith(NAMESPACE_SCOPE_PREFIX):
        namespace_scope(scope[len(NAMESPACE_SCOPE_PREFIX) :])
        return scope
    raise InvalidArgument(
        f"invalid catalog scope {scope!r}: use Catalog(store) outside a cluster, or "
        "Catalog.for_namespace(store, namespace) for a Kubernetes namespace"
    )


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    volume_id: str
    created: float
    #: Who wrote the name (the operator marks its own), or None.
    owner: str | None = None


@dataclass(frozen=True)
class Listed:
    """One name of :meth:`Catalog.scan`: its volume's metadata, or why it cannot be read."""

    name: str
    #: None when the name's own entry is unreadable.
    volume_id: str | None
    meta: VolumeMeta | None
    #: One line saying what is damaged; None for a healthy volume.
    problem: str | None = None


class Catalog:
    def __init__(self, store: Store, scope: str = DEFAULT_SCOPE) -> None:
        self.store = store
        self.scope = _check_scope(scope)

    @classmethod
    def for_namespace(cls, store: Store, namespace: str) -> Catalog:
        """The names of one Kubernetes namespace, as the operator and the node plugin see them."""
        return cls(store, namespace_scope(namespace))

    def _key(self, name: str) -> str:
        return catalog_key(self.scope, check_name(name))

    def _read(self, name: str) -> CatalogEntry:
        try:
            raw = self.store.get(self._key(name))
        except NotFound as exc:
            raise NotFound(f"volume {name!r} not found") from exc
        try:
            data = json.loads(raw)
            owner = data.get("owner")
            entry = CatalogEntry(name, str(data["id"]), float(data["created"]), owner)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptData(f"catalog entry of {name!r} is malformed") from exc
        if not VOLUME_ID_RE.match(entry.volume_id) or not isinstance(owner, str | None):
            raise CorruptData(f"catalog entry of {name!r} holds an invalid id or owner")
        return entry

    def _write(self, name: str, volume_id: str, owner: str | None = None) -> bool:
        data: dict[str, object] = {"id": volume_id, "created": time.time()}
        if owner is not None:
            data["owner"] = owner
        return self.store.put_if_absent(self._key(name), json.dumps(data).encode())

    def entry(self, name: str) -> CatalogEntry:
        """The name's entry (its volume id and who wrote it), without reading the volume."""
        return self._read(name)

    def lookup(self, name: str) -> VolumeMeta:
        return Repo(self.store, self._read(name).volume_id).meta

    def repo(self, name: str) -> Repo:
        return Repo(self.store, self._read(name).volume_id)

    def create(
        self,
        name: str,
        *,
        version: int = 2,
        limits: Limits | None = None,
        allow_existing: bool = False,
        volume_id: str | None = None,
        owner: str | None = None,
    ) -> VolumeMeta:
        """Create a volume and its name. With ``allow_existing``, an existing volume of the
        same version is returned; of another version, :class:`VersionMismatch`.
        ``owner`` is recorded in the name's entry (see :meth:`entry`)."""
        check_name(name)
        Limits.for_version(version)  # validates the version before anything is written
        check_limits(limits)
        try:
            existing = self._read(name)
        except NotFound:
            existing = None
        if existing is None:
            repo = Repo.create(self.store, version=version, limits=limits, volume_id=volume_id)
            if self._write(name, repo.volume_id, owner):
                return repo.meta
            existing = self._read(name)  # lost a race with another creator
            if existing.volume_id != repo.volume_id and volume_id is None:
                repo.destroy()
        if volume_id is not None and existing.volume_id != volume_id:
            raise AlreadyExists(f"volume {name!r} exists with another id ({existing.volume_id})")
        meta = Repo(self.store, existing.volume_id).meta
        if not allow_existing:
            raise AlreadyExists(f"volume {name!r} already exists")
        if meta.version != version:
            raise VersionMismatch(f"volume {name!r} is version {meta.version}, not {version}")
        return meta

    def names(self) -> list[str]:
        return sorted(
            info.key.rsplit("/", 1)[-1]
            for info in self.store.list(f"{CATALOG_PREFIX}{self.scope}/")
        )

    def scan(self) -> list[Listed]:
        """Every name, sorted, with its volume's metadata; a damaged entry or metadata is
        reported in ``problem`` and never keeps the other names from being listed."""
        result = []
        for name in self.names():
            try:
                entry = self._read(name)
            except NotFound:
                continue  # deleted while listing
            except KvolError as exc:
                result.append(Listed(name, None, None, str(exc)))
                continue
            try:
                meta = Repo(self.store, entry.volume_id).meta
            except NotFound:
                continue  # deleted while listing (the name goes first, then the data)
            except KvolError as exc:
                result.append(Listed(name, entry.volume_id, None, str(exc)))
                continue
            result.append(Listed(name, entry.volume_id, meta))
        return result

    def list(self) -> list[tuple[str, VolumeMeta]]:
        """Every name whose volume can be read (:meth:`scan` reports the others too)."""
        return [(item.name, item.meta) for item in self.scan() if item.meta is not None]

    def rename(self, old: str, new: str) -> None:
        entry = self._read(old)
        if not self._write(check_name(new), entry.volume_id, entry.owner):
            raise AlreadyExists(f"volume {new!r} already exists")
        self.store.delete(self._key(old))

    def delete(self, name: str, *, allow_missing: bool = False) -> None:
        """Remove the name first (nobody can open it any more), then the data, unless
        another name, in any scope, still refers to it (see :meth:`names_of`). Works on a volume whose metadata is
        damaged, and on a name whose entry is unreadable (then only the name goes)."""
        try:
            entry = self._read(name)
        except NotFound:
            if allow_missing:
                return
            raise
        except CorruptData:
            # The id cannot be read, so neither can the data be found: the name goes.
            self.store.delete(self._key(name))
            return
        # A rename cut short leaves two names for one volume: deleting the stale one must
        # not take the data the other still names.
        shared = self._other_names(entry.volume_id, name)
        self.store.delete(self._key(name))
        if not shared:
            Repo(self.store, entry.volume_id).destroy()

    def _other_names(self, volume_id: str, name: str) -> builtins.list[str]:
        """Keys of the names for ``volume_id`` other than ``name``."""
        own = self._key(name)
        return [key for key in self.names_of(volume_id) if key != own]

    def names_of(self, volume_id: str) -> builtins.list[str]:
        """Keys of every name for ``volume_id``, in the CLI's scope and every namespace's:
        an older operator kept a namespace ``main``'s names in the CLI's scope, so one
        volume can be named from both. An entry gone meanwhile names nothing; a damaged
        one names the volume if its id is still in it (when in doubt the data stays); a
        store that does not answer stops the caller rather than answer "nobody"."""
        found = []
        for prefix in (
            f"{CATALOG_PREFIX}{DEFAULT_SCOPE}/",
            CATALOG_PREFIX + NAMESPACE_SCOPE_PREFIX,
        ):
            for info in self.store.list(prefix):
                try:
                    raw = self.store.get(info.key)
                except NotFound:
                    continue  # deleted meanwhile
                try:
                    named = json.loads(raw).get("id") == volume_id
                except (ValueError, AttributeError):
                    named = volume_id.encode() in raw
                if named:
                    found.append(info.key)
        return found


def check_limits(limits: Limits | None) -> None:
    """Refuse limits that no volume could be created with (negative or non-integer)."""
    if limits is None:
        return
    for field in Limits.FIELDS:
        value = getattr(limits, field)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise InvalidArgument(f"limit {field} must be a non-negative integer, not {value!r}")
