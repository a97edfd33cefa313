"""Handles on volumes, the base of the SDK's :class:`kvol.volume.Volume`: how a handle names
its volume (by name in a catalog scope, or by id, in a store), the ways to make one, and
its resolution on first use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Self

from kvol.catalog import DEFAULT_SCOPE, Catalog, check_limits, check_name, namespace_scope
from kvol.content import DEFAULT_CHUNK_SIZE
from kvol.errors import InvalidArgument, KvolError, NotFound, ReadOnly, VersionMismatch
from kvol.model import VOLUME_ID_RE, Limits
from kvol.repo import Repo
from kvol.retention import RetentionPolicy, write_policy
from kvol.store import Store, open_store


class VolumeHandle:
    """A lazy handle on one volume: what names it, and the volume's repo once it is first
    used. The handles :class:`kvol.volume.Volume` makes and their resolution are here;
    what a handle does with its volume is :class:`kvol.volume.Volume`'s."""

    def __init__(
        self,
        *,
        store: Store | str | None,
        name: str | None = None,
        volume_id: str | None = None,
        create_if_missing: bool = False,
        version: int | None = None,
        read_only: bool = False,
        sub_path: str = "",
        namespace: str | None = None,
        _repo: Repo | None = None,
    ) -> None:
        self._store_arg = store
        #: The Kubernetes namespace whose catalog scope names the volume (None: the CLI's).
        self.namespace = namespace
        self._name = name
        self._volume_id = volume_id
        self._create_if_missing = create_if_missing
        self._version = version
        self._repo = _repo
        #: Mount options (see :meth:`kvol.volume.Volume.with_mount_options`).
        self.read_only = read_only
        self.sub_path = sub_path

    def __repr__(self) -> str:
        what = self._name if self._name is not None else self._volume_id
        return f"Volume({what!r})"

    # -- handles --------------------------------------------------------------------------

    @classmethod
    def from_name(
        cls,
        name: str,
        *,
        create_if_missing: bool = False,
        version: int | None = None,
        store: Store | str | None = None,
        namespace: str | None = None,
    ) -> Self:
        """A lazy handle on the volume called ``name``; nothing is read until it is used.

        With ``create_if_missing`` the first use creates it (version ``version`` or 2). If
        it exists with another ``version`` than asked, its first use raises VersionMismatch.
        With ``namespace``, the name is the one the pods of that Kubernetes namespace use
        (the operator's Volume of that name), in the same store.
        """
        check_name(name)
        if version is not None:
            Limits.for_version(version)  # 1 or 2, checked now
        check_namespace(namespace)
        return cls(
            store=store,
            name=name,
            create_if_missing=create_if_missing,
            version=version,
            namespace=namespace,
        )

    @classmethod
    def from_id(cls, volume_id: str, *, store: Store | str | None = None) -> Self:
        if not isinstance(volume_id, str) or not VOLUME_ID_RE.match(volume_id):
            raise InvalidArgument(f"invalid volume id {volume_id!r}: expected 32 hex digits")
        return cls(store=store, volume_id=volume_id)

    @classmethod
    def create(
        cls,
        name: str,
        *,
        version: int = 2,
        allow_existing: bool = False,
        limits: Limits | None = None,
        store: Store | str | None = None,
        namespace: str | None = None,
        keep_last: int | None = None,
        keep_for: float | None = None,
    ) -> Self:
        """Create a volume now. AlreadyExists if the name is taken, unless ``allow_existing``
        (then an existing volume of another version is VersionMismatch). With ``namespace``,
        in that Kubernetes namespace's scope (see :meth:`from_name`). ``keep_last`` /
        ``keep_for`` (seconds) set its retention policy (see :meth:`set_retention`); by
        default it keeps every commit."""
        policy = RetentionPolicy(keep_last, keep_for)  # checked before the store
        if limits is not None and not isinstance(limits, Limits):
            raise InvalidArgument(
                f"limits must be a kvol.model.Limits, not {type(limits).__name__}"
            )
        check_limits(limits)  # before the store is even opened
        check_namespace(namespace)
        s = store_of(store)
        meta = catalog_of(s, namespace).create(
            name, version=version, limits=limits, allow_existing=allow_existing
        )
        if not policy.keeps_everything:
            write_policy(s, meta.id, policy)
        return cls(
            store=s, name=name, volume_id=meta.id, namespace=namespace, _repo=Repo(s, meta.id, meta)
        )

    @classmethod
    @contextlib.contextmanager
    def ephemeral(
        cls, *, version: int = 2, store: Store | str | None = None, chunk_size: int | None = None
    ) -> Iterator[Self]:
        """A nameless volume that exists for the ``with`` block and is deleted after it."""
        s = store_of(store)
        repo = Repo.create(s, version=version, chunk_size=chunk_size or DEFAULT_CHUNK_SIZE)
        try:
            yield cls(store=s, volume_id=repo.volume_id, _repo=repo)
        finally:
            repo.destroy()

    @classmethod
    def list(cls, *, store: Store | str | None = None, namespace: str | None = None) -> list[Self]:
        """Every named volume, sorted by name, as handles that already know their id.

        A volume whose metadata is damaged is listed too (one broken volume never hides
        the others); using its handle raises the error that describes the damage."""
        check_namespace(namespace)
        s = store_of(store)
        return [
            cls(
                store=s,
                name=item.name,
                volume_id=item.volume_id,
                namespace=namespace,
                _repo=Repo(s, item.meta.id, item.meta) if item.meta is not None else None,
            )
            for item in catalog_of(s, namespace).scan()
        ]

    @classmethod
    def delete(
        cls,
        name: str,
        *,
        allow_missing: bool = False,
        store: Store | str | None = None,
        namespace: str | None = None,
    ) -> None:
        """Delete a volume and all its data. Irreversible. Works on a volume whose
        metadata is damaged."""
        check_namespace(namespace)
        catalog_of(store_of(store), namespace).delete(name, allow_missing=allow_missing)

    @classmethod
    def rename(
        cls,
        old_name: str,
        new_name: str,
        *,
        store: Store | str | None = None,
        namespace: str | None = None,
    ) -> None:
        """Give a volume another name (in the same scope); its data does not move."""
        check_namespace(namespace)
        catalog_of(store_of(store), namespace).rename(old_name, new_name)

    # -- resolution -----------------------------------------------------------------------

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def object_id(self) -> str:
        """The volume's id (resolves the handle)."""
        return self._resolve().volume_id

    @property
    def store(self) -> Store:
        return self._resolve().store

    @property
    def repo(self) -> Repo:
        """Low-level access to the volume's data (history, restore, garbage collection)."""
        return self._resolve()

    def hydrate(self) -> Self:
        """Resolve the handle now (look the name up, create the volume if asked)."""
        self._resolve()
        return self

    def _resolve(self) -> Repo:
        if self._repo is not None:
            return self._repo
        s = store_of(self._store_arg)
        self._store_arg = s
        if self._volume_id is not None:
            repo = Repo(s, self._volume_id)
            repo.meta  # noqa: B018 - NotFound now rather than at the first read
        else:
            assert self._name is not None
            catalog = catalog_of(s, self.namespace)
            try:
                meta = catalog.lookup(self._name)
            except NotFound:
                if not self._create_if_missing:
                    raise
                meta = catalog.create(self._name, version=self._version or 2, allow_existing=True)
            if self._version is not None and meta.version != self._version:
                raise VersionMismatch(
                    f"volume {self._name!r} is version {meta.version}, not {self._version}"
                )
            repo = Repo(s, meta.id, meta)
            self._volume_id = meta.id
        self._repo = repo
        return repo

    def _id_if_reachable(self) -> str | None:
        if self._volume_id is not None:
            return self._volume_id
        try:
            return self._resolve().volume_id
        except KvolError:
            return None

    def _writable(self) -> Repo:
        if self.read_only:
            raise ReadOnly(f"{self!r} is read-only")
        return self._resolve()


def store_of(store: Store | str | None) -> Store:
    """The store a handle was given: itself, or the one a URL (None: the default) names."""
    return store if isinstance(store, Store) else open_store(store)


def check_namespace(namespace: str | None) -> None:
    if namespace is not None:
        namespace_scope(namespace)  # InvalidArgument now, before the store is opened


def catalog_of(store: Store, namespace: str | None) -> Catalog:
    """The names the CLI uses, or those of a Kubernetes namespace's pods and Volumes."""
    if namespace is None:
        return Catalog(store, DEFAULT_SCOPE)
    return Catalog.for_namespace(store, namespace)
