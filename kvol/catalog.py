"""Volume names, kept in the store next to the volumes (DESIGN: names live in a catalog).

A name maps to an opaque volume id under ``catalog/<scope>/<name>``; renaming moves no
data. The scope is ``main`` for the CLI and SDK and the namespace in a cluster, where
the operator writes the same entries so every component resolves names alike.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from kvol.errors import AlreadyExists, CorruptData, InvalidArgument, NotFound, VersionMismatch
from kvol.layout import CATALOG_PREFIX, catalog_key
from kvol.model import VOLUME_ID_RE, Limits, VolumeMeta
from kvol.repo import Repo
from kvol.store import Store

# Kubernetes object names fit this too, so a Volume's name is always a valid catalog name.
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$")
DEFAULT_SCOPE = "main"


def check_name(name: str, what: str = "volume name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidArgument(
            f"invalid {what} {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    volume_id: str
    created: float


class Catalog:
    def __init__(self, store: Store, scope: str = DEFAULT_SCOPE) -> None:
        self.store = store
        self.scope = check_name(scope, "scope")

    def _key(self, name: str) -> str:
        return catalog_key(self.scope, check_name(name))

    def _read(self, name: str) -> CatalogEntry:
        try:
            raw = self.store.get(self._key(name))
        except NotFound as exc:
            raise NotFound(f"volume {name!r} not found") from exc
        try:
            data = json.loads(raw)
            entry = CatalogEntry(name, str(data["id"]), float(data["created"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptData(f"catalog entry of {name!r} is malformed") from exc
        if not VOLUME_ID_RE.match(entry.volume_id):
            raise CorruptData(f"catalog entry of {name!r} holds an invalid id")
        return entry

    def _write(self, name: str, volume_id: str) -> bool:
        body = json.dumps({"id": volume_id, "created": time.time()}).encode()
        return self.store.put_if_absent(self._key(name), body)

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
    ) -> VolumeMeta:
        """Create a volume and its name. With ``allow_existing``, an existing volume of the
        same version is returned; of another version, :class:`VersionMismatch`."""
        check_name(name)
        Limits.for_version(version)  # validates the version before anything is written
        try:
            existing = self._read(name)
        except NotFound:
            existing = None
        if existing is None:
            repo = Repo.create(self.store, version=version, limits=limits, volume_id=volume_id)
            if self._write(name, repo.volume_id):
                return repo.meta
            existing = self._read(name)  # lost a race with another creator
            if existing.volume_id != repo.volume_id and volume_id is None:
                repo.destroy()
        meta = Repo(self.store, existing.volume_id).meta
        if volume_id is not None and existing.volume_id != volume_id:
            raise AlreadyExists(f"volume {name!r} exists with another id ({existing.volume_id})")
        if not allow_existing:
            raise AlreadyExists(f"volume {name!r} already exists")
        if meta.version != version:
            raise VersionMismatch(f"volume {name!r} is version {meta.version}, not {version}")
        return meta

    def list(self) -> list[tuple[str, VolumeMeta]]:
        result = []
        for info in self.store.list(f"{CATALOG_PREFIX}{self.scope}/"):
            name = info.key.rsplit("/", 1)[-1]
            try:
                result.append((name, self.lookup(name)))
            except NotFound:
                continue  # deleted while listing
        return result

    def rename(self, old: str, new: str) -> None:
        entry = self._read(old)
        if not self._write(check_name(new), entry.volume_id):
            raise AlreadyExists(f"volume {new!r} already exists")
        self.store.delete(self._key(old))

    def delete(self, name: str, *, allow_missing: bool = False) -> None:
        """Remove the name first (nobody can open it any more), then the data."""
        try:
            entry = self._read(name)
        except NotFound:
            if allow_missing:
                return
            raise
        self.store.delete(self._key(name))
        Repo(self.store, entry.volume_id).destroy()
