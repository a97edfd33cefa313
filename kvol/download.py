"""Downloading a file or a tree of a volume to local disk (``Volume.download``, ``kvol
volume get``): refused over existing files unless forced, never through a symbolic link
below the destination, each file written whole and renamed into place."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from kvol import fsops, paths
from kvol.errors import AlreadyExists, InvalidArgument, InvalidPath, NotFound
from kvol.model import FileRecord
from kvol.progress import Advance, bar
from kvol.repo import Repo

log = logging.getLogger(__name__)


def download_to(
    repo: Repo, remote_path: str, local_path: str | os.PathLike[str], *, force: bool = False
) -> tuple[int, int]:
    """As :meth:`kvol.volume.Volume.download`, from the volume of ``repo``."""
    state = repo.state()
    rel = paths.normalize(remote_path, allow_root=True)
    local = Path(local_path)
    name = rel.rsplit("/", 1)[-1]
    # Each destination is (a directory the caller named, the names below it).
    plan: list[tuple[tuple[str, ...], FileRecord]] = []
    dirs: list[tuple[str, ...]] = []
    top: tuple[str, ...] | None = None  # the names a tree's files have before theirs
    if rel in state.files:
        into = local.is_dir() or str(local_path).endswith("/")
        root = local if into else local.parent
        plan.append(((name if into else local.name,), state.files[rel]))
    elif rel == "" or state.is_dir(rel):
        if local.exists() and not local.is_dir():
            raise InvalidArgument(f"{local} is not a directory")
        root = local
        top = (name,) if rel and local.is_dir() else ()
        cut = len(rel) + 1 if rel else 0
        plan = [(top + tuple(p[cut:].split("/")), r) for p, r in sorted(state.iter_under(rel))]
        dirs = [top] + [
            top + tuple(d[cut:].split("/"))
            for d in sorted(state.dirs)
            if paths.is_under(d, rel) and d != rel
        ]
    else:
        raise NotFound(f"/{rel} does not exist in the volume")
    skipped: set[tuple[str, ...]] = set()
    existing: list[Path] = []
    for parts, _ in plan:
        link = _link_on_the_way(root, parts[:-1])
        if link is not None:
            skipped.add(parts)
            continue
        dest = root.joinpath(*parts)
        if dest.is_symlink() or dest.exists():
            if dest.is_dir() and not dest.is_symlink():
                raise InvalidArgument(f"{dest} is a directory; a file of the volume goes there")
            existing.append(dest)
    if existing and not force:
        shown = ", ".join(str(p) for p in existing[:5])
        more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        raise AlreadyExists(
            f"{shown}{more} exist{'s' if len(existing) == 1 else ''} already; nothing was "
            "downloaded (use force=True, or get --force, to overwrite)"
        )
    root.mkdir(parents=True, exist_ok=True)
    for d in dirs:
        try:
            if _link_on_the_way(root, d) is not None:
                raise _Skip(d)
            os.close(_open_dirs(root, d))
        except _Skip:
            skipped.add(d)
    plan = [item for item in plan if item[0] not in skipped]
    total = sum(r.size for _, r in plan)
    written = files = 0
    reader = repo.reader()
    with bar(total, "download") as advance:
        for batch in _prefetch_batches(plan):
            # Small files come from whole packs fetched once, a bounded batch at a time.
            reader.prefetch(r for _, r in batch)
            try:
                for parts, record in batch:
                    try:
                        source = rel if top is None else "/".join([rel, *parts[len(top) :]])
                        chunks = reader.iter_parts(record, source)
                        _write_local(root, parts, chunks, record, advance)
                    except _Skip:
                        skipped.add(parts)
                        continue
                    files += 1
                    written += record.size
            finally:
                reader.release()
    if skipped:
        listed = sorted(str(root.joinpath(*p)) for p in skipped)
        log.warning(
            "skipped %d path(s) reached through a symbolic link (links are never followed): %s%s",
            len(listed),
            ", ".join(listed[:5]),
            f" and {len(listed) - 5} more" if len(listed) > 5 else "",
        )
    return files, written


#: Packed bytes fetched ahead by one download batch (bounds its memory).
PREFETCH_BYTES = 64 * 1024 * 1024


def _prefetch_batches(
    plan: list[tuple[tuple[str, ...], FileRecord]],
) -> Iterator[list[tuple[tuple[str, ...], FileRecord]]]:
    batch: list[tuple[tuple[str, ...], FileRecord]] = []
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


class _Skip(Exception):
    """A destination that can only be reached through a symbolic link."""


def _link_on_the_way(root: Path, parts: tuple[str, ...]) -> Path | None:
    """The first symbolic link among ``root``'s descendants named by ``parts``, if any;
    InvalidArgument if one of them is something else than a directory."""
    path = root
    for part in parts:
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return path
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(
                f"{path} is not a directory; a directory of the volume goes there"
            )
    return None


def _open_dirs(root: Path, parts: tuple[str, ...]) -> int:
    """A descriptor of the directory ``root``/``parts``, made where missing (as ``cp``
    makes them, the umask applied), reached without following a link below ``root`` (a
    link there raises :class:`_Skip`; ``root`` itself may be one)."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return fsops.open_dir(root_fd, "/".join(parts), create=True, mode=0o777)
    except InvalidPath as exc:
        raise _Skip("/".join(parts)) from exc
    finally:
        os.close(root_fd)


def _write_local(
    root: Path,
    parts: tuple[str, ...],
    chunks: Iterator[bytes],
    record: FileRecord,
    advance: Advance,
) -> None:
    """Write a whole file next to its destination, then rename it over: never a half
    file, never through a link. The temporary name is short, so a file name of up to
    255 bytes still fits."""
    dfd = _open_dirs(root, parts[:-1])
    try:
        tmp = f".kvol-tmp-{secrets.token_hex(4)}"
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dfd,
        )
        try:
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                    advance(len(chunk))
                # Permission bits only: a volume never plants setuid or setgid files.
                os.fchmod(fd, record.mode & 0o777)
                os.utime(fd, ns=(record.mtime_ns, record.mtime_ns))
            finally:
                os.close(fd)
            os.replace(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    finally:
        os.close(dfd)
