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
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from kvol import mounted, paths, upload
from kvol.catalog import DEFAULT_SCOPE, Catalog, check_name
from kvol.content import DEFAULT_CHUNK_SIZE
from kvol.errors import (
    AlreadyExists,
    InvalidArgument,
    KvolError,
    NotFound,
    ReadOnly,
    VersionMismatch,
)
from kvol.model import VOLUME_ID_RE, DeleteOp, FileRecord, Limits, MkdirOp, Op, PutOp, State
from kvol.progress import Advance, bar
from kvol.repo import Repo
from kvol.store import Store, open_store

__all__ = ["BatchUpload", "FileEntry", "FileEntryType", "Volume", "VolumeInfo"]


class FileEntryType(enum.StrEnum):
    FILE = "file"
    DIRECTORY = "directory"


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
        }


class Volume:
    """A named, persistent volume. Create handles with :meth:`from_name`, :meth:`from_id`,
    :meth:`create` or :meth:`ephemeral`, never with the constructor."""

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
        _repo: Repo | None = None,
    ) -> None:
        self._store_arg = store
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
    ) -> Volume:
        """A lazy handle on the volume called ``name``; nothing is read until it is used.

        With ``create_if_missing`` the first use creates it (version ``version`` or 2). If
        it exists with another ``version`` than asked, its first use raises VersionMismatch.
        """
        check_name(name)
        if version is not None:
            Limits.for_version(version)  # 1 or 2, checked now
        return cls(store=store, name=name, create_if_missing=create_if_missing, version=version)

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
    ) -> Volume:
        """Create a volume now. AlreadyExists if the name is taken, unless ``allow_existing``
        (then an existing volume of another version is VersionMismatch)."""
        s = _open(store)
        meta = Catalog(s, DEFAULT_SCOPE).create(
            name, version=version, limits=limits, allow_existing=allow_existing
        )
        return cls(store=s, name=name, volume_id=meta.id, _repo=Repo(s, meta.id, meta))

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
    def list(cls, *, store: Store | str | None = None) -> list[Volume]:
        """Every named volume, sorted by name, as handles that already know their id."""
        s = _open(store)
        return [
            cls(store=s, name=name, volume_id=meta.id, _repo=Repo(s, meta.id, meta))
            for name, meta in sorted(Catalog(s, DEFAULT_SCOPE).list())
        ]

    @classmethod
    def delete(
        cls, name: str, *, allow_missing: bool = False, store: Store | str | None = None
    ) -> None:
        """Delete a volume and all its data. Irreversible."""
        Catalog(_open(store), DEFAULT_SCOPE).delete(name, allow_missing=allow_missing)

    @classmethod
    def rename(cls, old_name: str, new_name: str, *, store: Store | str | None = None) -> None:
        """Give a volume another name; its data does not move."""
        Catalog(_open(store), DEFAULT_SCOPE).rename(old_name, new_name)

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
            catalog = Catalog(s, DEFAULT_SCOPE)
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

    # -- reading --------------------------------------------------------------------------

    def info(self) -> VolumeInfo:
        repo = self._resolve()
        stats = repo.stats()
        meta = repo.meta
        return VolumeInfo(
            id=repo.volume_id,
            name=self._name,
            version=meta.version,
            head=stats.head,
            files=stats.files,
            bytes=stats.bytes,
            created=meta.created,
            last_commit=stats.last_commit_time,
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
        return repo.reader().iter_parts(record)

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
        with the mode and modification time it has in the volume."""
        repo = self._resolve()
        state = repo.state()
        rel = paths.normalize(remote_path, allow_root=True)
        local = Path(local_path)
        name = rel.rsplit("/", 1)[-1]
        plan: builtins.list[tuple[Path, FileRecord]] = []
        dirs: builtins.list[Path] = []
        if rel in state.files:
            into = local.is_dir() or str(local_path).endswith("/")
            plan.append((local / name if into else local, state.files[rel]))
        elif rel == "" or state.is_dir(rel):
            if local.exists() and not local.is_dir():
                raise InvalidArgument(f"{local} is not a directory")
            base = local / name if rel and local.is_dir() else local
            cut = len(rel) + 1 if rel else 0
            plan = [(base / p[cut:], r) for p, r in sorted(state.iter_under(rel))]
            dirs = [base] + [base / d[cut:] for d in sorted(state.dirs) if paths.is_under(d, rel)]
        else:
            raise NotFound(f"{_show(rel)} does not exist in the volume")
        existing = [dest for dest, _ in plan if dest.exists() or dest.is_symlink()]
        for dest in existing:
            if dest.is_dir() and not dest.is_symlink():
                raise InvalidArgument(f"{dest} is a directory; a file of the volume goes there")
        if existing and not force:
            shown = ", ".join(str(p) for p in existing[:5])
            more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
            raise AlreadyExists(
                f"{shown}{more} exist{'s' if len(existing) == 1 else ''} already; nothing was "
                "downloaded (use force=True, or get --force, to overwrite)"
            )
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        total = sum(r.size for _, r in plan)
        reader = repo.reader()
        with bar(total, "download") as advance:
            for batch in _prefetch_batches(plan):
                # Small files come from whole packs fetched once, a bounded batch at a time.
                reader.prefetch(r for _, r in batch)
                try:
                    for dest, record in batch:
                        _write_local(dest, reader.iter_parts(record), record, advance)
                finally:
                    reader.release()
        return len(plan), total

    # -- writing --------------------------------------------------------------------------

    def remove_file(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, or a directory and everything under it with ``recursive``."""
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
        upload.publish(repo, state, [DeleteOp(rel)], f"remove {_show(rel)}")

    def copy_files(
        self, src_paths: Sequence[str], dst_path: str, *, recursive: bool = False
    ) -> None:
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
                ops.append(PutOp(target + p[len(src) :], record))
        upload.publish(repo, state, ops, f"copy to {_show(dst)}")

    def batch_upload(self, *, force: bool = False) -> BatchUpload:
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


class BatchUpload:
    """Files gathered by :meth:`Volume.batch_upload`, published as one commit on exit."""

    def __init__(self, volume: Volume, force: bool) -> None:
        self._volume = volume
        self._force = force
        self._items: dict[str, upload.Pending] = {}
        self._dirs: set[str] = set()
        self.seq: int | None = None
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
        remote_path: str,
        mode: int | None = None,
    ) -> None:
        """Add a local file (a path or a binary file object) at ``remote_path``.

        ``mode`` sets its permission bits: by default a path keeps its own, a file object
        gets 0o644. A file object is read now; a path is read when the batch ends.
        """
        remote = paths.normalize(remote_path)
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
            data = local_file.read()
            if not isinstance(data, bytes):
                raise InvalidArgument("put_file needs a binary file object (open it with 'rb')")
            self._add(
                upload.Pending(
                    remote,
                    data=data,
                    mode=upload.DEFAULT_MODE if mode is None else mode,
                    mtime_ns=time.time_ns(),
                )
            )

    def put_directory(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        recursive: bool = True,
    ) -> None:
        """Add every file under a local directory below ``remote_path`` (subdirectories
        too unless ``recursive=False``; empty ones are kept as directories)."""
        root = Path(local_path)
        if not root.is_dir():
            raise NotFound(f"{root} is not a directory")
        remote_root = paths.normalize(remote_path, allow_root=True)
        for directory, dirnames, filenames in os.walk(root):
            rel_dir = Path(directory).relative_to(root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir
            base = "/".join(p for p in (remote_root, rel_dir) if p)
            if base and not filenames and not dirnames:
                self._dirs.add(paths.normalize(base))
            for filename in sorted(filenames):
                local = Path(directory, filename)
                if not local.is_file():
                    continue  # sockets, fifos, dangling links
                self._add(upload.Pending(paths.normalize(f"{base}/{filename}"), local=local))
            if not recursive:
                dirnames.clear()

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


def _show(rel: str) -> str:
    return "/" + rel


def _size(local: Path | None) -> int:
    try:
        return local.stat().st_size if local is not None else 0
    except OSError:
        return 0


def _file_record(state: State, path: str) -> FileRecord:
    rel = paths.normalize(path)
    record = state.files.get(rel)
    if record is None:
        if state.is_dir(rel):
            raise InvalidArgument(f"{_show(rel)} is a directory, not a file")
        raise NotFound(f"{_show(rel)} does not exist in the volume")
    return record


#: Packed bytes fetched ahead by one download batch (bounds its memory).
PREFETCH_BYTES = 64 * 1024 * 1024


def _prefetch_batches(
    plan: builtins.list[tuple[Path, FileRecord]],
) -> Iterator[builtins.list[tuple[Path, FileRecord]]]:
    batch: builtins.list[tuple[Path, FileRecord]] = []
    packed = 0
    for item in plan:
        batch.append(item)
        if item[1].parts and item[1].parts[0].kind == "p":
            packed += item[1].size
        if packed >= PREFETCH_BYTES:
            yield batch
            batch, packed = [], 0
    if batch:
        yield batch


def _write_local(dest: Path, chunks: Iterator[bytes], record: FileRecord, advance: Advance) -> None:
    """Write a whole file next to ``dest``, then rename it over: never a half file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.kvol-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                advance(len(chunk))
            os.fchmod(fd, record.mode)
        finally:
            os.close(fd)
        os.utime(tmp, ns=(record.mtime_ns, record.mtime_ns))
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
