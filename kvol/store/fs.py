"""A store in a directory: local disk, or NFS / hostPath shared by several machines.

Objects are files under the root, named by their key. Writes go to a temporary file
first, so a reader never sees half an object; ``put_if_absent`` publishes with
``link(2)``, which fails atomically when the name exists (also over NFS, unlike
``rename``, which replaces). A durable store syncs each object before its name; a
commit's content is named only at the commit's sync (kvol.store.fs_staged).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import secrets
import threading
from collections.abc import Callable, Collection, Container, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, quote, unquote, urlparse

from kvol import errors, fsops
from kvol.store.base import ObjectInfo, Store, check_key
from kvol.store.fs_staged import StagedObjects, fsync_dirs, make_dirs, name_durably

_TMP = ".tmp"
#: Prefix of objects a collection moved aside to look at before deleting them.
_ASIDE = "gc-"


#: Keys of the objects a collection may move aside: content (see kvol.layout).
_COLLECTED = re.compile(r"/(blobs|packs)/")


def _aside_key(name: str) -> str | None:
    """The key of an object moved aside (None for another temporary)."""
    if not name.startswith(_ASIDE) or name.count("-") < 2:
        return None
    return unquote(name.split("-", 2)[2])


def _copy_range(src: int, dst: int, offset: int, length: int) -> int:
    """Copy up to ``length`` bytes from ``src`` at ``offset`` to the start of ``dst``, in the
    kernel where it can; returns how many were copied (fewer if the file ended)."""
    done = 0
    try:
        while done < length:
            n = os.copy_file_range(src, dst, length - done, offset + done, done)
            if n == 0:
                return done
            done += n
        return done
    except OSError as exc:
        # Not supported between these files (another filesystem on old kernels, some
        # network filesystems): copy through a buffer from where the kernel stopped.
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while done < length:
        data = os.pread(src, min(length - done, 1 << 20), offset + done)
        if not data:
            break
        written = 0
        while written < len(data):
            written += os.pwrite(dst, memoryview(data)[written:], done + written)
        done += len(data)
    return done


class FilesystemStore(Store):
    kind = "fs"

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.root = Path(root).absolute()
        #: Sync every object before its name, and a commit's content before its entry.
        #: Turning it off trades crash safety for speed (tests, scratch volumes).
        self.durable = durable
        self._staged = StagedObjects()
        self._sync_lock = threading.Lock()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / _TMP).mkdir(exist_ok=True)
        except OSError as exc:
            raise self._translate(exc) from exc

    @classmethod
    def from_url(cls, url: str) -> FilesystemStore:
        parsed = urlparse(url)
        if parsed.scheme not in ("", "file"):
            raise errors.InvalidArgument(f"not a filesystem store URL: {url!r}")
        if parsed.netloc not in ("", "localhost"):
            raise errors.InvalidArgument(f"file URLs name a local path, not a host: {url!r}")
        if not parsed.path:
            raise errors.InvalidArgument(f"filesystem store URL has no path: {url!r}")
        options = parse_qs(parsed.query)
        unknown = set(options) - {"fsync"}
        if unknown:
            raise errors.InvalidArgument(
                f"unknown filesystem store option(s) {sorted(unknown)}; known: fsync"
            )
        durable = options.get("fsync", ["true"])[-1].lower() not in ("0", "false", "no")
        return cls(parsed.path, durable=durable)

    @property
    def url(self) -> str:
        return f"file://{self.root}" + ("" if self.durable else "?fsync=false")

    def close(self) -> None:
        """Remove the content staged by commits of this process that failed before their
        sync (a collection would remove it only past its grace)."""
        self._staged.close()

    # -- reads --------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root / key

    def _get(self, key: str) -> bytes:
        with self._open_object(key) as f:
            return f.read()

    def _get_range(self, key: str, start: int, length: int) -> bytes:
        with self._open_object(key) as f:
            return os.pread(f.fileno(), length, start)

    def _open_object(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            staged = self._staged.file(key)
            if staged is not None:
                with contextlib.suppress(FileNotFoundError):
                    return open(staged, "rb")
            # A collection may have it aside right now, or may have died with it there:
            # whoever wants an object puts it back (keeping garbage is always safe).
            # Collections move only content; other keys are looked for in vain often.
            if not _COLLECTED.search(key) or not self._put_back_aside(key):
                raise
        return open(self._path(key), "rb")

    def _put_back_aside(self, key: str) -> bool:
        """Put back every copy of ``key`` a collection moved aside; whether there was one."""
        suffix = "-" + quote(key, safe="")
        found = False
        try:
            names = os.listdir(self.root / _TMP)
        except FileNotFoundError:
            return False
        for name in names:
            if name.startswith(_ASIDE) and name.endswith(suffix) and _aside_key(name) == key:
                self._put_back(self.root / _TMP / name, self._path(key))
                found = True
        return found

    def _head(self, key: str) -> ObjectInfo:
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            staged = self._staged_stat(key)
            if staged is not None:
                return ObjectInfo(key, staged.st_size, staged.st_mtime)
            if not _COLLECTED.search(key) or not self._put_back_aside(key):
                raise
            st = os.stat(self._path(key))
        if not os.path.isfile(self._path(key)):
            raise FileNotFoundError(errno.ENOENT, "not an object", key)
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def _list(self, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        base = self.root / prefix if prefix else self.root
        yield from self._walk(base, prefix, start_after)

    def _walk(
        self, directory: Path, key_prefix: str, start_after: str | None
    ) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        # What of start_after lies below this directory. An entry whose subtree (or
        # itself) sorts wholly before it is dropped at once: listing the end of a long log
        # should not sort the whole directory.
        rest = (
            start_after[len(key_prefix) :]
            if start_after is not None and start_after.startswith(key_prefix)
            else None
        )
        # Sort as the keys sort: a directory "a" holds keys "a/...", which sort after "a-b".
        keyed = []
        for entry in entries:
            if not key_prefix and entry.name == _TMP:
                continue
            if rest is not None:
                below = entry.name + "/"
                if below <= rest and not rest.startswith(below):
                    continue
            is_dir = entry.is_dir(follow_symlinks=False)
            keyed.append((key_prefix + entry.name + ("/" if is_dir else ""), entry, is_dir))
        keyed.sort(key=lambda item: item[0])
        for key, entry, is_dir in keyed:
            if is_dir:
                # Skip a whole subtree that sorts before start_after.
                if (
                    start_after is not None
                    and key <= start_after
                    and not start_after.startswith(key)
                ):
                    continue
                yield from self._walk(Path(entry.path), key, start_after)
            else:
                if start_after is not None and key <= start_after:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted while listing
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    # -- writes -------------------------------------------------------------------------

    def _write_temp(self, data: bytes | memoryview, *, fsync: bool) -> Path:
        tmp = self.root / _TMP / secrets.token_hex(12)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if fsync:
                os.fsync(fd)
            elif self.durable:
                fsops.start_writeback(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp

    def _put(self, key: str, data: bytes | memoryview) -> None:
        target = self._path(key)
        # Synced before its name: after a power loss the name holds all of it or the
        # object it replaced, never a file cut short.
        tmp = self._write_temp(data, fsync=self.durable)
        try:
            changed = make_dirs(target.parent)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.durable:
            fsync_dirs([target.parent, *changed])

    def _put_staged(self, key: str, data: bytes | memoryview) -> None:
        self._stage(key, self._write_temp(data, fsync=False))

    def _stage(self, key: str, tmp: Path) -> None:
        """``tmp`` is ``key`` from now on: named at the sync that asks for it (see
        kvol.store.fs_staged), or at once when this store does not sync."""
        if self.durable:
            try:
                replaced = self._staged.add(key, tmp)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            if replaced is not None:
                replaced.unlink(missing_ok=True)
            return
        target = self._path(key)
        try:
            make_dirs(target.parent)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        target = self._path(key)
        if target.exists():
            return False
        changed = make_dirs(target.parent)
        tmp = self._write_temp(data, fsync=self.durable)
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        if self.durable:
            fsync_dirs([target.parent, *changed])
        return True

    def copy_in(
        self,
        fd: int,
        offset: int,
        length: int,
        key_of: Callable[[mmap.mmap | bytes], str],
        fresh_after: float,
    ) -> tuple[str, int, bool] | None:
        """Store ``length`` bytes of the open file ``fd`` from ``offset`` as a new object
        named ``key_of(stored bytes)``: the filesystem fast path for content.

        The bytes move in the kernel (``copy_file_range``, as ``cp`` does) and the name is
        computed from the stored copy, mapped read-only, so what the key names is exactly
        what is stored even if the source changes meanwhile. An object already under that
        key and modified after ``fresh_after`` is kept. Returns the key, the bytes copied,
        and whether they were stored (False: kept the existing object); None at the end
        of the file.
        """
        return self._call("copy_in", self._copy_in, fd, offset, length, key_of, fresh_after)

    def _copy_in(
        self,
        fd: int,
        offset: int,
        length: int,
        key_of: Callable[[mmap.mmap | bytes], str],
        fresh_after: float,
    ) -> tuple[str, int, bool] | None:
        tmp = self.root / _TMP / secrets.token_hex(12)
        out = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            copied = _copy_range(fd, out, offset, length)
            if copied and self.durable:
                fsops.start_writeback(out)
            if copied:
                with mmap.mmap(out, copied, prot=mmap.PROT_READ) as view:
                    key = check_key(key_of(view))
        except BaseException:
            os.close(out)
            tmp.unlink(missing_ok=True)
            raise
        os.close(out)
        if not copied:
            tmp.unlink()
            return None
        try:
            if self._head(key).mtime > fresh_after:
                tmp.unlink()
                return key, copied, False
        except FileNotFoundError:
            pass
        self._stage(key, tmp)
        return key, copied, True

    def _delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        self._prune_dirs(path)

    # -- the store's clock and garbage ---------------------------------------------------

    def _now(self) -> float:
        # The filesystem dates a new file by its own clock (the server's, over NFS).
        tmp = self.root / _TMP / f"clock-{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            return os.fstat(fd).st_mtime
        finally:
            os.close(fd)
            tmp.unlink(missing_ok=True)

    def _renew(self, key: str) -> None:
        # utime(NULL) dates it by the filesystem's clock (over NFS: "set to server time").
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "not an object", key)
        os.utime(path)

    def _delete_if_older(self, key: str, cutoff: float) -> ObjectInfo | None:
        """Move the object aside, then look at it there: a renewal that landed before the
        move shows in the moved file, which goes back; one after it finds no object and
        fails (its commit publishes nothing). So nothing renewed is ever deleted."""
        path = self._path(key)
        try:
            if os.stat(path).st_mtime >= cutoff:
                return None
        except FileNotFoundError:
            return None
        # The name says where it goes back, should this process die before deciding.
        aside = self.root / _TMP / f"{_ASIDE}{secrets.token_hex(8)}-{quote(key, safe='')}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return None
        try:
            st = os.stat(aside)
        except FileNotFoundError:
            return None  # another collection, or a reader, dealt with it meanwhile
        if st.st_mtime >= cutoff:
            self._put_back(aside, path)
            return None
        aside.unlink(missing_ok=True)
        self._prune_dirs(path)
        return ObjectInfo(key, st.st_size, st.st_mtime)

    @staticmethod
    def _put_back(aside: Path, path: Path) -> None:
        for _ in range(100):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.link(aside, path)
            except FileExistsError:
                pass  # written again meanwhile: that copy stands (same key, same bytes)
            except FileNotFoundError:
                if not aside.exists():
                    return  # another collector finished with it
                continue  # its directory was pruned between mkdir and link: again
            aside.unlink(missing_ok=True)
            return
        raise errors.StoreError(f"could not put {path} back; it is kept as {aside}")

    def _remove_temporaries(self, cutoff: float, garbage: Container[str]) -> tuple[int, int]:
        """Temporary files of writes killed halfway, and content staged by commits that
        never synced it (each is dated as it is written, and a commit's content is
        reused or written again within a renewal's threshold: an old one is abandoned), and
        objects a collection killed halfway had moved aside: back unless old and known to
        be ``garbage`` (a renewed object may have been published since, whatever its age
        by the time this runs)."""
        count = size = 0
        try:
            entries = list(os.scandir(self.root / _TMP))
        except FileNotFoundError:
            return 0, 0
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                if not entry.is_file(follow_symlinks=False):
                    continue
                key = _aside_key(entry.name)
                if key is not None and (st.st_mtime >= cutoff or key not in garbage):
                    self._put_back(Path(entry.path), self._path(check_key(key)))
                    continue
                if st.st_mtime >= cutoff:
                    continue
                os.unlink(entry.path)
            except (FileNotFoundError, errors.InvalidArgument):
                continue
            count += 1
            size += st.st_size
        return count, size

    def _prune_dirs(self, path: Path) -> None:
        # Leave no empty directories behind, up to the root.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def sync(self, keys: Collection[str] = ()) -> None:
        """Name the staged objects among ``keys`` once their data is durable, and make
        every name among ``keys`` durable (see kvol.store.fs_staged)."""
        if not self.durable or not keys:
            return
        # One sync at a time: a key another sync took is named when this one starts.
        with self._sync_lock:
            taken = self._staged.take(keys)
            many = len(keys) > fsops.SYNC_EACH_LIMIT
            try:
                name_durably(
                    self.root,
                    [(key, tmp, self._path(key)) for key, tmp in taken],
                    set() if many else {self._path(key).parent for key in keys},
                    many=many,
                )
            except BaseException as exc:
                # Staged again, what is left unnamed: a retry finds it.
                self._staged.give_back((key, tmp) for key, tmp in taken if tmp.exists())
                if isinstance(exc, OSError):
                    # A write-back error means the content is not durable: the entry
                    # that would name it must not be written.
                    raise self._translate(exc) from exc
                raise

    def _staged_stat(self, key: str) -> os.stat_result | None:
        tmp = self._staged.file(key)
        if tmp is None:
            return None
        try:
            return os.stat(tmp)
        except FileNotFoundError:
            self._staged.forget(key, tmp)  # collected as an old temporary
            return None

    def _translate(self, exc: Exception) -> errors.KvolError:
        if isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError):
            return errors.NotFound(f"no object {exc.filename!r} in {self.url}")
        if isinstance(exc, PermissionError):
            return errors.PermissionDenied(f"permission denied in {self.url}: {exc}")
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return errors.StoreError(f"no space left on the device of {self.url}")
        if isinstance(exc, OSError) and exc.errno in (errno.EIO, errno.ESTALE, errno.ETIMEDOUT):
            return errors.StoreUnavailable(f"{self.url}: {exc}")
        return errors.StoreError(f"{self.url}: {exc}")
