"""``kvol.Volume``: the Python SDK, in the shape of Modal's ``modal.Volume``.

A :class:`Volume` is a lazy handle: ``Volume.from_name("data")`` touches nothing until it
is used. File operations (``listdir``, ``read_file``, ``batch_upload``, ``remove_file``,
``copy_files``) work on the store directly and each lands as one commit. ``commit()`` and
``reload()`` act on the volume's mounted working copy, found as :mod:`kvol.mounted`
describes (``$KVOL_MOUNTS``, then the current directory and its ancestors).

Paths inside a volume are ``/``-separated; a leading ``/`` names the volume root, and
``..`` is refused.
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import logging
import os
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO, ClassVar

from kvol import fsck, mounted, paths, upload
from kvol.catalog import DEFAULT_SCOPE, Catalog, check_limits, check_name, namespace_scope
from kvol.content import DEFAULT_CHUNK_SIZE
from kvol.download import download_to
from kvol.errors import (
    AlreadyExists,
    CorruptData,
    InvalidArgument,
    KvolError,
    NotFound,
    ReadOnly,
    VersionMismatch,
)
from kvol.model import (
    VOLUME_ID_RE,
    FileRecord,
    Limits,
    MkdirOp,
    Op,
    PutOp,
    RmdirOp,
    State,
    UnlinkOp,
)
from kvol.progress import Advance, bar
from kvol.repo import Repo
from kvol.retention import PruneReport, RetentionPolicy, prune_history, read_policy, write_policy
from kvol.store import Store, open_store

__all__ = ["BatchUpload", "FileEntry", "FileEntryType", "Volume", "VolumeInfo", "VolumeManager"]

log = logging.getLogger(__name__)


class FileEntryType(enum.IntEnum):
    """What a :class:`FileEntry` is. The numbers are Modal's (``modal.FileEntryType``), so
    the members compare equal to its members; they also compare equal to their lowercase
    names (``"file"``, ``"directory"``), which is what ``str()`` gives. A volume holds
    files and directories only: the other members exist for code written against Modal."""

    UNSPECIFIED = 0
    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3
    FIFO = 4
    SOCKET = 5

    def __str__(self) -> str:
        return self.name.lower()

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return other == self.name.lower()
        return int.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return int.__hash__(self)

    @classmethod
    def _missing_(cls, value: object) -> FileEntryType | None:
        # FileEntryType("file") as well as FileEntryType(1).
        if isinstance(value, str):
            for member in cls:
                if member.name.lower() == value:
                    return member
        return None


@dataclass(frozen=True)
class FileEntry:
    """A file or directory of a volume, as ``listdir``/``iterdir`` report it."""

    #: Relative to the volume root, without a leading ``/`` (``data/part-0.parquet``).
    path: str
    type: FileEntryType
    #: Seconds since the epoch; a directory reports its newest file's.
    mtime: float
    #: Bytes; a directory reports the total of the files under it.
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "type": str(self.type), "mtime": self.mtime, "size": self.size}


@dataclass(frozen=True)
class VolumeInfo:
    id: str
    name: str | None
    version: int
    head: int
    files: int
    bytes: int
    created: float
    #: When the newest commit was published; None for a volume with no commit.
    last_commit: float | None
    #: ``created`` as an aware local datetime (Modal's ``VolumeInfo.created_at``).
    created_at: datetime
    #: Who created the volume, when its name records it (the operator marks the volumes
    #: it creates); None otherwise: the store keeps no user identity.
    created_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "head": self.head,
            "files": self.files,
            "bytes": self.bytes,
            "created": self.created,
            "last_commit": self.last_commit,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }


class Volume:
    """A named, persistent volume. Create handles with :meth:`from_name`, :meth:`from_id`,
    :meth:`create` or :meth:`ephemeral`, never with the constructor."""

    #: Modal's form of create, list and delete: ``Volume.objects.create("data")``.
    objects: ClassVar[VolumeManager]

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
        self._found_mount: mounted.Mount | None = None
        #: Mount options (see :meth:`with_mount_options`).
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
    ) -> Volume:
        """A lazy handle on the volume called ``name``; nothing is read until it is used.

        With ``create_if_missing`` the first use creates it (version ``version`` or 2). If
        it exists with another ``version`` than asked, its first use raises VersionMismatch.
        With ``namespace``, the name is the one the pods of that Kubernetes namespace use
        (the operator's Volume of that name), in the same store.
        """
        check_name(name)
        if version is not None:
            Limits.for_version(version)  # 1 or 2, checked now
        _check_namespace(namespace)
        return cls(
            store=store,
            name=name,
            create_if_missing=create_if_missing,
            version=version,
            namespace=namespace,
        )

    @classmethod
    def from_id(cls, volume_id: str, *, store: Store | str | None = None) -> Volume:
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
    ) -> Volume:
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
        _check_namespace(namespace)
        s = _open(store)
        meta = _catalog(s, namespace).create(
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
    ) -> Iterator[Volume]:
        """A nameless volume that exists for the ``with`` block and is deleted after it."""
        s = _open(store)
        repo = Repo.create(s, version=version, chunk_size=chunk_size or DEFAULT_CHUNK_SIZE)
        try:
            yield cls(store=s, volume_id=repo.volume_id, _repo=repo)
        finally:
            repo.destroy()

    @classmethod
    def list(
        cls, *, store: Store | str | None = None, namespace: str | None = None
    ) -> list[Volume]:
        """Every named volume, sorted by name, as handles that already know their id.

        A volume whose metadata is damaged is listed too (one broken volume never hides
        the others); using its handle raises the error that describes the damage."""
        _check_namespace(namespace)
        s = _open(store)
        return [
            cls(
                store=s,
                name=item.name,
                volume_id=item.volume_id,
                namespace=namespace,
                _repo=Repo(s, item.meta.id, item.meta) if item.meta is not None else None,
            )
            for item in _catalog(s, namespace).scan()
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
        _check_namespace(namespace)
        _catalog(_open(store), namespace).delete(name, allow_missing=allow_missing)

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
        _check_namespace(namespace)
        _catalog(_open(store), namespace).rename(old_name, new_name)

    def with_mount_options(
        self, *, read_only: bool | None = None, sub_path: str | None = None
    ) -> Volume:
        """A copy of this handle configured for mounting: ``read_only`` refuses writes
        (through this handle too), ``sub_path`` mounts one directory of the volume."""
        copy = Volume(
            store=self._store_arg,
            name=self._name,
            volume_id=self._volume_id,
            create_if_missing=self._create_if_missing,
            version=self._version,
            read_only=self.read_only if read_only is None else read_only,
            sub_path=self.sub_path
            if sub_path is None
            else paths.normalize(sub_path, allow_root=True),
            namespace=self.namespace,
            _repo=self._repo,
        )
        return copy

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

    def retention_policy(self) -> RetentionPolicy:
        """The volume's retention policy (keeps every commit unless one was set)."""
        return read_policy(self.store, self._resolve().volume_id)

    def set_retention(
        self, *, keep_last: int | None = None, keep_for: float | None = None
    ) -> RetentionPolicy:
        """Keep the last ``keep_last`` commits and/or those newer than ``keep_for``
        seconds (a commit either keeps is kept; the head always is); neither keeps
        everything. Commits outside it are pruned by :meth:`prune` (``kvol volume gc``)."""
        policy = RetentionPolicy(keep_last, keep_for)
        write_policy(self.store, self._resolve().volume_id, policy)
        return policy

    def prune(self, *, grace_seconds: float | None = None) -> PruneReport:
        """Prune history outside the retention policy (see :mod:`kvol.retention`)."""
        repo = self._resolve()
        if grace_seconds is None:
            return prune_history(repo)
        return prune_history(repo, grace_seconds=grace_seconds)

    def hydrate(self) -> Volume:
        """Resolve the handle now (look the name up, create the volume if asked)."""
        self._resolve()
        return self

    def _resolve(self) -> Repo:
        if self._repo is not None:
            return self._repo
        s = _open(self._store_arg)
        self._store_arg = s
        if self._volume_id is not None:
            repo = Repo(s, self._volume_id)
            repo.meta  # noqa: B018 - NotFound now rather than at the first read
        else:
            assert self._name is not None
            catalog = _catalog(s, self.namespace)
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

    # -- checking -------------------------------------------------------------------------

    def fsck(
        self,
        *,
        verify_content: bool = True,
        repair_from: Sequence[str | os.PathLike[str]] | None = None,
        progress: fsck.Progress | None = None,
    ) -> fsck.FsckReport:
        """Check every commit, checkpoint and content object of the volume (hashing the
        content unless ``verify_content`` is False); ``report.ok`` says whether it is whole,
        ``report.damage`` what is damaged and which commits and files that affects.

        With ``repair_from`` (working copies, node content caches), damaged content those
        copies still hold is re-published first, and ``report.damage`` is what is left.
        """
        try:
            repo = self._resolve()
        except CorruptData:
            # Damaged metadata is for fsck to report, not to stop it: open by id.
            s = _open(self._store_arg)
            volume_id = self._volume_id
            if volume_id is None:
                assert self._name is not None
                volume_id = _catalog(s, self.namespace).entry(self._name).volume_id
            repo = Repo(s, volume_id)
        if repair_from is None:
            return fsck.check(repo, verify_content=verify_content, progress=progress)
        return fsck.check_and_repair(
            repo, [Path(p) for p in repair_from], verify_content=verify_content, progress=progress
        )

    # -- reading --------------------------------------------------------------------------

    def info(self) -> VolumeInfo:
        repo = self._resolve()
        stats = repo.stats()
        meta = repo.meta
        owner = None
        if self._name is not None:
            with contextlib.suppress(KvolError):  # renamed or deleted meanwhile: unknown
                owner = _catalog(repo.store, self.namespace).entry(self._name).owner
        return VolumeInfo(
            id=repo.volume_id,
            name=self._name,
            version=meta.version,
            head=stats.head,
            files=stats.files,
            bytes=stats.bytes,
            created=meta.created,
            last_commit=stats.last_commit_time,
            created_at=datetime.fromtimestamp(meta.created).astimezone(),
            created_by=owner,
        )

    def listdir(self, path: str = "/", *, recursive: bool = False) -> builtins.list[FileEntry]:
        """Entries of a directory (every descendant with ``recursive``), or the file itself."""
        return list(self.iterdir(path, recursive=recursive))

    def iterdir(self, path: str = "/", *, recursive: bool = True) -> Iterator[FileEntry]:
        """Like :meth:`listdir`, but recursive by default and lazy (as in Modal)."""
        state = self._resolve().state()
        return iter(_entries(state, paths.normalize(path, allow_root=True), recursive))

    def read_file(self, path: str) -> Iterator[bytes]:
        """The file's content as an iterator of chunks, each verified before it is yielded."""
        repo = self._resolve()
        record = _file_record(repo.state(), path)
        return repo.reader().iter_parts(record, path)

    def read_file_into_fileobj(
        self, path: str, fileobj: IO[bytes], *, progress: Advance | None = None
    ) -> int:
        """Write the file's content into ``fileobj``; returns the number of bytes written."""
        written = 0
        for chunk in self.read_file(path):
            fileobj.write(chunk)
            written += len(chunk)
            if progress is not None:
                progress(len(chunk))
        return written

    def stat(self, path: str) -> FileEntry:
        """The entry of one path (NotFound if it does not exist)."""
        state = self._resolve().state()
        rel = paths.normalize(path, allow_root=True)
        return _entry_of(state, rel)

    def download(
        self, remote_path: str, local_path: str | os.PathLike[str], *, force: bool = False
    ) -> tuple[int, int]:
        """Copy a file or a directory tree of the volume to local disk, like ``cp -r``;
        returns (files, bytes). Existing local files are refused unless ``force``,
        before anything is written. Each file is written whole, then renamed into place,
        with the mode and modification time it has in the volume.

        ``local_path`` itself may be a symbolic link to a directory, but no link below it
        is ever followed: a file whose way down passes a link is skipped (and logged as a
        warning), and a link standing where a file goes is replaced, never written through.
        """
        return download_to(self._resolve(), remote_path, local_path, force=force)

    # -- writing --------------------------------------------------------------------------

    def remove_file(self, path: str, recursive: bool = False) -> None:
        """Remove a file, or a directory and everything under it with ``recursive``.

        The commit names every file and directory this call saw: a file another writer
        adds under the directory meanwhile survives, and so does the directory holding it.
        """
        repo = self._writable()
        rel = paths.normalize(path)
        state = repo.state()
        if rel not in state.files:
            if not state.is_dir(rel):
                raise NotFound(f"{_show(rel)} does not exist in the volume")
            if not recursive:
                raise InvalidArgument(
                    f"{_show(rel)} is a directory: remove it with recursive=True (CLI: rm -r)"
                )
        upload.publish(repo, state, tree_removal(state, rel), f"remove {_show(rel)}")

    def copy_files(self, src_paths: Sequence[str], dst_path: str, recursive: bool = False) -> None:
        """Copy files (directories with ``recursive``) inside the volume, like ``cp``:
        into ``dst_path`` if it is a directory, ends with ``/`` or there are several
        sources, else to ``dst_path`` itself. Content is shared, never uploaded again."""
        if isinstance(src_paths, str):
            raise InvalidArgument("src_paths must be a list of paths, not one string")
        if not src_paths:
            raise InvalidArgument("copy_files needs at least one source path")
        repo = self._writable()
        state = repo.state()
        dst = paths.normalize(dst_path, allow_root=True)
        into = (
            dst == ""
            or dst_path.endswith("/")
            or len(src_paths) > 1
            or (dst not in state.files and state.is_dir(dst))
        )
        if into and dst in state.files:
            raise InvalidArgument(f"{_show(dst)} is a file, not a directory")
        ops: list[Op] = []
        for src_path in src_paths:
            src = paths.normalize(src_path)
            target = f"{dst}/{src.rsplit('/', 1)[-1]}".lstrip("/") if into else dst
            if not target:
                raise InvalidArgument("cannot copy over the volume root")
            if src in state.files:
                _refuse_file_over_dir(state, target)
                ops.append(PutOp(target, state.files[src]))
                continue
            if not state.is_dir(src):
                raise NotFound(f"{_show(src)} does not exist in the volume")
            if not recursive:
                raise InvalidArgument(
                    f"{_show(src)} is a directory: copy it with recursive=True (CLI: cp -r)"
                )
            if paths.is_under(target, src):
                raise InvalidArgument(f"cannot copy {_show(src)} into itself")
            ops.append(MkdirOp(target))
            for d in sorted(d for d in state.dirs if paths.is_under(d, src) and d != src):
                ops.append(MkdirOp(target + d[len(src) :]))
            for p, record in sorted(state.iter_under(src)):
                _refuse_file_over_dir(state, target + p[len(src) :])
                ops.append(PutOp(target + p[len(src) :], record))
        upload.publish(repo, state, ops, f"copy to {_show(dst)}")

    def batch_upload(self, force: bool = False) -> BatchUpload:
        """Upload many files as one commit::

            with vol.batch_upload() as batch:
                batch.put_file("local.txt", "/remote.txt")
                batch.put_directory("./data", "/data")

        Everything lands at once when the block ends, nothing if it raises. Existing
        files are not overwritten unless ``force`` (AlreadyExists otherwise).
        """
        self._writable()
        return BatchUpload(self, force)

    # -- mounted working copies -----------------------------------------------------------

    def commit(self, message: str | None = None) -> dict[str, Any]:
        """Publish the changes of this volume's mounted working copy (see :mod:`kvol.mounted`).

        Raises if the commit fails; every change is then still in the working copy, whose
        path the error names, and the next commit (or the mount's final commit) sends it.
        """
        if self.read_only:
            raise ReadOnly(f"{self!r} is read-only: nothing to commit")
        mount = self._mount("commit")
        try:
            return mount.commit(message)
        except KvolError as exc:
            raise type(exc)(
                f"{exc} (nothing was lost: your changes are still in {mount.root})"
            ) from exc

    def reload(self) -> dict[str, Any]:
        """Bring this volume's mounted working copy up to the newest commit. Local changes
        not yet committed are kept; VolumeBusy while files under the mount are open."""
        return self._mount("reload").reload()

    def _mount(self, action: str) -> mounted.Mount:
        cached = self._found_mount
        if cached is not None and mounted.at(cached.root) is not None:
            return cached
        mount = mounted.find(self._name, self._id_if_reachable)
        self._found_mount = mount
        if mount is None:
            raise InvalidArgument(
                f"{self!r} is not mounted here, so there is nothing to {action}: {action}() "
                f"acts on a mounted working copy, looked for in ${mounted.MOUNTS_ENV}, in the "
                "current directory and its parents, and at this process's mount points "
                "(batch_upload, remove_file and copy_files publish by themselves)"
            )
        return mount

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


class VolumeManager:
    """``Volume.objects``: named volumes managed as Modal's ``modal.Volume.objects`` does.

    Unlike :meth:`Volume.create` and :meth:`Volume.list`, ``create`` returns nothing and
    ``list`` is newest first (both as in Modal).
    """

    def create(
        self,
        name: str,
        *,
        version: int | None = None,
        allow_existing: bool = False,
        limits: Limits | None = None,
        store: Store | str | None = None,
        namespace: str | None = None,
    ) -> None:
        """Create a named volume (version ``version``, else 2). With ``allow_existing`` an
        existing one is left as it is; it must then be of ``version`` if one is given."""
        try:
            Volume.create(
                name,
                version=version or 2,
                allow_existing=allow_existing,
                limits=limits,
                store=store,
                namespace=namespace,
            )
        except VersionMismatch:
            if version is not None:
                raise

    def list(
        self,
        *,
        max_objects: int | None = None,
        created_before: datetime | str | None = None,
        store: Store | str | None = None,
        namespace: str | None = None,
    ) -> builtins.list[Volume]:
        """Named volumes, newest first: at most ``max_objects``, only those created before
        ``created_before`` (a datetime or an ISO date; without a zone, local time).
        Volumes whose metadata is damaged come last, whatever their age."""
        if max_objects is not None and max_objects < 0:
            raise InvalidArgument("max_objects cannot be negative")
        before = _timestamp(created_before)
        found = [
            (v._repo.meta.created if v._repo is not None else None, v)
            for v in Volume.list(store=store, namespace=namespace)
        ]
        kept = [(c, v) for c, v in found if before is None or c is None or c < before]
        kept.sort(key=lambda item: -(item[0] or 0.0))
        volumes = [v for _, v in kept]
        return volumes if max_objects is None else volumes[:max_objects]

    def delete(
        self,
        name: str,
        *,
        allow_missing: bool = False,
        store: Store | str | None = None,
        namespace: str | None = None,
    ) -> None:
        """Delete a named volume and all its data. Irreversible."""
        Volume.delete(name, allow_missing=allow_missing, store=store, namespace=namespace)


Volume.objects = VolumeManager()


def _timestamp(when: datetime | str | None) -> float | None:
    if when is None:
        return None
    if isinstance(when, str):
        try:
            when = datetime.fromisoformat(when)
        except ValueError as exc:
            raise InvalidArgument(f"created_before {when!r} is not an ISO date") from exc
    if when.tzinfo is None:
        when = when.astimezone()  # naive: local time
    return when.timestamp()


class BatchUpload:
    """Files gathered by :meth:`Volume.batch_upload`, published as one commit on exit."""

    def __init__(self, volume: Volume, force: bool) -> None:
        self._volume = volume
        self._force = force
        self._items: dict[str, upload.Pending] = {}
        self._dirs: set[str] = set()
        self.seq: int | None = None
        #: Local paths :meth:`put_directory` left out: links and other non-regular files.
        self.skipped: list[str] = []
        #: Set to draw a progress bar (the CLI does); None decides by terminal.
        self.progress_description = "upload"

    def __enter__(self) -> BatchUpload:
        return self

    def __len__(self) -> int:
        """Files added so far."""
        return len(self._items)

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.seq = self._publish()

    def put_file(
        self,
        local_file: str | os.PathLike[str] | BinaryIO,
        remote_path: str | PurePosixPath,
        mode: int | None = None,
    ) -> None:
        """Add a local file (a path or a binary file object) at ``remote_path``.

        ``mode`` sets its permission bits: by default a path keeps its own, a file object
        gets 0o644. A file object is read now; a path is read when the batch ends.
        A ``remote_path`` ending with ``/`` names a directory, not a file: ValueError.
        """
        remote_text = str(remote_path)
        if remote_text.endswith("/"):
            # A file named after the directory would surprise; Modal refuses it too.
            raise InvalidArgument(
                f"remote_path {remote_text!r} ends with '/': put_file needs the file's own "
                "path (put_directory uploads a directory)"
            )
        remote = paths.normalize(remote_text)
        if mode is not None and not 0 <= mode <= 0o7777:
            raise InvalidArgument(f"mode must be permission bits (0 to 0o7777), not {mode:#o}")
        if isinstance(local_file, str | os.PathLike):
            local = Path(local_file)
            if not local.exists():
                raise NotFound(f"{local} does not exist")
            if not local.is_file():
                raise InvalidArgument(
                    f"{local} is not a regular file (put_directory uploads directories)"
                )
            self._add(upload.Pending(remote, local=local, mode=mode))
        else:
            if remote in self._items:
                raise InvalidArgument(f"{_show(remote)} is already part of this batch")
            # Read now, a chunk at a time: content past the pack size goes to the store at
            # once (invisible until the batch publishes), so it is never whole in memory.
            self._add(
                upload.from_file_object(
                    self._volume._writable(),
                    remote,
                    local_file,
                    upload.DEFAULT_MODE if mode is None else mode,
                    time.time_ns(),
                )
            )

    def put_directory(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str | PurePosixPath,
        recursive: bool = True,
    ) -> None:
        """Add every file under a local directory below ``remote_path`` (subdirectories
        too unless ``recursive=False``; empty ones are kept as directories)."""
        root = Path(local_path)
        if not root.is_dir():
            raise NotFound(f"{root} is not a directory")
        remote_root = paths.normalize(str(remote_path), allow_root=True)
        # Links are never followed: one could lead anywhere (/etc/passwd), and a volume
        # holds no links. The tree's own root may be one: the caller named it.
        within = Path(os.path.realpath(root))
        for directory, dirnames, filenames in os.walk(root):
            rel_dir = Path(directory).relative_to(root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir
            base = "/".join(p for p in (remote_root, rel_dir) if p)
            for dirname in list(dirnames):
                if os.path.islink(os.path.join(directory, dirname)):
                    dirnames.remove(dirname)
                    self._skip(Path(directory, dirname), "a symbolic link")
            if base and not filenames and not dirnames:
                self._dirs.add(paths.normalize(base))
            for filename in sorted(filenames):
                local = Path(directory, filename)
                try:
                    mode = os.lstat(local).st_mode
                except FileNotFoundError:
                    continue  # removed meanwhile
                if stat.S_ISLNK(mode):
                    self._skip(local, "a symbolic link")
                elif not stat.S_ISREG(mode):
                    self._skip(local, "not a regular file")
                else:
                    remote = paths.normalize(f"{base}/{filename}")
                    self._add(upload.Pending(remote, local=local, within=within))
            if not recursive:
                dirnames.clear()

    def _skip(self, local: Path, why: str) -> None:
        self.skipped.append(str(local))
        log.warning("skipped %s: %s (not uploaded)", local, why)

    def _add(self, item: upload.Pending) -> None:
        if item.remote in self._items:
            raise InvalidArgument(f"{_show(item.remote)} is already part of this batch")
        self._items[item.remote] = item

    def _publish(self) -> int | None:
        if not self._items and not self._dirs:
            return None
        repo = self._volume._writable()
        state = repo.state()
        self._check_targets(state)
        sizes = {
            i.remote: len(i.data) if i.data is not None else _size(i.local)
            for i in self._items.values()
        }
        ops: list[Op] = [MkdirOp(d) for d in sorted(self._dirs) if not state.is_dir(d)]
        # Check the limits with the sizes known now, so nothing is sent in vain; the
        # publish checks again with what was actually read.
        upload.check_limits(
            repo.meta.limits,
            state,
            ops + [PutOp(p, FileRecord(n, 0, 0, "0" * 64, ())) for p, n in sizes.items()],
        )
        with bar(sum(sizes.values()), self.progress_description) as advance:
            ops += upload.upload(repo, self._items.values(), state, advance)
        count = len(self._items)
        return upload.publish(repo, state, ops, f"upload of {count} file{'s' * (count != 1)}")

    def _check_targets(self, state: State) -> None:
        existing: list[str] = []
        for remote in self._items:
            if state.is_dir(remote):
                raise InvalidArgument(f"{_show(remote)} is a directory in the volume")
            if remote in state.files:
                existing.append(remote)
            existing += [a for a in paths.ancestors(remote) if a in state.files]
        for d in self._dirs:
            if d in state.files:
                existing.append(d)
        if existing and not self._force:
            shown = ", ".join(_show(p) for p in sorted(set(existing))[:5])
            more = f" and {len(set(existing)) - 5} more" if len(set(existing)) > 5 else ""
            raise AlreadyExists(
                f"{shown}{more} already exist{'s' if len(existing) == 1 else ''} in the volume; "
                "nothing was uploaded (use force=True, or put -f, to overwrite)"
            )


# -- helpers ----------------------------------------------------------------------------------


def _open(store: Store | str | None) -> Store:
    return store if isinstance(store, Store) else open_store(store)


def _check_namespace(namespace: str | None) -> None:
    if namespace is not None:
        namespace_scope(namespace)  # InvalidArgument now, before the store is opened


def _catalog(store: Store, namespace: str | None) -> Catalog:
    """The names the CLI uses, or those of a Kubernetes namespace's pods and Volumes."""
    if namespace is None:
        return Catalog(store, DEFAULT_SCOPE)
    return Catalog.for_namespace(store, namespace)


def _show(rel: str) -> str:
    return "/" + rel


def _size(local: Path | None) -> int:
    try:
        return local.stat().st_size if local is not None else 0
    except OSError:
        return 0


def tree_removal(state: State, rel: str) -> builtins.list[Op]:
    """The operations that remove ``rel`` (a file, or a directory tree) as ``state`` has
    it: every file by name, then every explicit directory, deepest first. Never a
    recursive delete, which would also take files another writer added meanwhile."""
    if rel in state.files:
        return [UnlinkOp(rel)]
    ops: builtins.list[Op] = [UnlinkOp(p) for p, _ in sorted(state.iter_under(rel))]
    dirs = [d for d in state.dirs if d == rel or paths.is_under(d, rel)]
    ops += [RmdirOp(d) for d in sorted(dirs, key=lambda d: (-d.count("/"), d))]
    return ops


def _refuse_file_over_dir(state: State, target: str) -> None:
    # A file published over a directory takes the whole tree under it, whatever it holds
    # by then: like cp, refuse instead.
    if target not in state.files and state.is_dir(target):
        raise InvalidArgument(
            f"{_show(target)} is a directory in the volume: a file cannot replace it "
            "(remove it first)"
        )


def _file_record(state: State, path: str) -> FileRecord:
    rel = paths.normalize(path)
    record = state.files.get(rel)
    if record is None:
        if state.is_dir(rel):
            raise InvalidArgument(f"{_show(rel)} is a directory, not a file")
        raise NotFound(f"{_show(rel)} does not exist in the volume")
    return record


def _entry_of(state: State, rel: str) -> FileEntry:
    if rel in state.files:
        record = state.files[rel]
        return FileEntry(rel, FileEntryType.FILE, record.mtime_ns / 1e9, record.size)
    if rel == "" or state.is_dir(rel):
        mtime = size = 0
        for _, record in state.iter_under(rel):
            mtime = max(mtime, record.mtime_ns)
            size += record.size
        return FileEntry(rel, FileEntryType.DIRECTORY, mtime / 1e9, size)
    raise NotFound(f"{_show(rel)} does not exist in the volume")


def _entries(state: State, rel: str, recursive: bool) -> list[FileEntry]:
    """Entries under ``rel`` sorted by path; a file yields itself."""
    if rel in state.files:
        return [_entry_of(state, rel)]
    if rel and not state.is_dir(rel):
        raise NotFound(f"{_show(rel)} does not exist in the volume")
    prefix = rel + "/" if rel else ""
    # One pass over the state gathers every directory's newest mtime and total size.
    dir_mtime: dict[str, int] = {}
    dir_size: dict[str, int] = {}
    files: list[FileEntry] = []
    for path, record in state.iter_under(rel):
        below = path[len(prefix) :]
        if recursive or "/" not in below:
            files.append(FileEntry(path, FileEntryType.FILE, record.mtime_ns / 1e9, record.size))
        for ancestor in paths.ancestors(path):
            if len(ancestor) > len(rel):
                dir_mtime[ancestor] = max(dir_mtime.get(ancestor, 0), record.mtime_ns)
                dir_size[ancestor] = dir_size.get(ancestor, 0) + record.size
    dirs = {d for d in state.all_dirs() if d.startswith(prefix)}
    if not recursive:
        dirs = {d for d in dirs if "/" not in d[len(prefix) :]}
    entries = files + [
        FileEntry(d, FileEntryType.DIRECTORY, dir_mtime.get(d, 0) / 1e9, dir_size.get(d, 0))
        for d in dirs
    ]
    entries.sort(key=lambda e: e.path)
    return entries
