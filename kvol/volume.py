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
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, ClassVar

from kvol import fsck, mounted, paths
from kvol.batch_upload import BatchUpload
from kvol.download import download_to
from kvol.errors import CorruptData, InvalidArgument, KvolError, ReadOnly, VersionMismatch
from kvol.model import Limits
from kvol.progress import Advance
from kvol.repo import Repo
from kvol.retention import PruneReport, RetentionPolicy, prune_history, read_policy, write_policy
from kvol.store import Store
from kvol.volume_edits import copy_paths, remove_path, tree_removal
from kvol.volume_entries import FileEntry, FileEntryType, entries, entry_of, file_record
from kvol.volume_handle import VolumeHandle, catalog_of, store_of

__all__ = [
    "BatchUpload",
    "FileEntry",
    "FileEntryType",
    "Volume",
    "VolumeInfo",
    "VolumeManager",
    "tree_removal",
]


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


class Volume(VolumeHandle):
    """A named, persistent volume. Create handles with :meth:`from_name`, :meth:`from_id`,
    :meth:`create` or :meth:`ephemeral`, never with the constructor."""

    #: Modal's form of create, list and delete: ``Volume.objects.create("data")``.
    objects: ClassVar[VolumeManager]
    #: The mounted working copy :meth:`commit` and :meth:`reload` act on, once found.
    _found_mount: mounted.Mount | None = None

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

    # -- retention ------------------------------------------------------------------------

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
            s = store_of(self._store_arg)
            volume_id = self._volume_id
            if volume_id is None:
                assert self._name is not None
                volume_id = catalog_of(s, self.namespace).entry(self._name).volume_id
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
                owner = catalog_of(repo.store, self.namespace).entry(self._name).owner
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
        return iter(entries(state, paths.normalize(path, allow_root=True), recursive))

    def read_file(self, path: str) -> Iterator[bytes]:
        """The file's content as an iterator of chunks, each verified before it is yielded."""
        repo = self._resolve()
        record = file_record(repo.state(), path)
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
        return entry_of(state, rel)

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
        remove_path(self._writable(), path, recursive)

    def copy_files(self, src_paths: Sequence[str], dst_path: str, recursive: bool = False) -> None:
        """Copy files (directories with ``recursive``) inside the volume, like ``cp``:
        into ``dst_path`` if it is a directory, ends with ``/`` or there are several
        sources, else to ``dst_path`` itself. Content is shared, never uploaded again."""
        if isinstance(src_paths, str):
            raise InvalidArgument("src_paths must be a list of paths, not one string")
        if not src_paths:
            raise InvalidArgument("copy_files needs at least one source path")
        copy_paths(self._writable(), src_paths, dst_path, recursive)

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
